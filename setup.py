from setuptools import find_packages, setup

setup(
    name='alfo-torchreid',
    version='0.1.0',
    description='ALFO (attribute-local feature overlap network) for torchreid',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['alfo_torchreid', 'alfo_torchreid.*']),
    # the shipped attribute schemas (Market-1501_attribute, DukeMTMC-attribute)
    package_data={'alfo_torchreid.data': ['schemas/*.yaml']},
    python_requires='>=3.9',
    install_requires=[
        # the supported range: 2.14.1 is CI's pin (constraints.txt), 2.11 the lent GPU
        # machine's, where benchmarks/gpu_check.py runs (benchmarks/README.md)
        'torch>=2.11',
        'torchvision>=0.26',
        'torchreid>=0.2.5',
        # torchreid imports cv2 at import time but does not declare it.
        'opencv-python-headless',
        'numpy',
        'scipy',
        'gdown',
        'yacs',
        'tensorboard',
        'matplotlib',
        'Pillow',
        'tqdm',
    ],
    extras_require={
        'faiss': ['faiss-cpu'],  # FAISS search backends of tools/search.py
        'export': ['onnx', 'onnxruntime'],  # tools/export.py --format onnx
        # CI tests the optional backends too
        'test': ['pytest', 'hypothesis', 'import-linter', 'faiss-cpu', 'onnx', 'onnxruntime'],
    },
)
