"""YAML read without a key given twice.

PyYAML keeps the last of two equal keys in one mapping, so a second ``train:``
section of a config, or a second ``gender:`` of a schema file, would silently
replace the first. :class:`UniqueKeyLoader` refuses it instead; the config
loader (:mod:`alfo_torchreid.config`) and the schema file reader
(:mod:`alfo_torchreid.data.schema_file`) build on it.
"""
import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that raises ``yaml.YAMLError`` (one line naming the
    line and the key) for a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key, _ in node.value:
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.value in first:
                raise yaml.YAMLError(f'line {line}: key "{key.value}" is given twice in one '
                                     f'mapping (first on line {first[key.value]}); the second '
                                     'would silently replace the first: merge them')
            first.setdefault(getattr(key, 'value', None), line)
        return super().construct_mapping(node, deep)
