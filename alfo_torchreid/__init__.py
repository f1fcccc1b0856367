"""ALFO (attribute-local feature overlap network) for torchreid."""
__version__ = '0.1.0'
