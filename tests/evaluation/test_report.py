"""The side-by-side report of finished runs (alfo_torchreid.evaluation.report)."""
import math

from alfo_torchreid.evaluation import report


def test_the_attribute_plot_keeps_the_attributes_of_every_series(tmp_path, monkeypatch):
    # a Market run beside a Duke run: each has attributes the other lacks
    market = {'mA': 0.6, 'balanced_accuracy': {'gender': 0.6, 'age': 0.6},
              'num_classes': {'gender': 2, 'age': 4}}
    duke = {'mA': 0.7, 'balanced_accuracy': {'gender': 0.8, 'boots': 0.6},
            'num_classes': {'gender': 2, 'boots': 2}}
    runs = [{'name': 'market', 'results': {'market1501_attr': {'attributes': market}}},
            {'name': 'duke', 'results': {'dukemtmc_attr': {'attributes': duke}}}]
    plot = report.attribute_plot(runs)
    assert plot.names == ['gender', 'age', 'boots']
    assert plot.chance == {'gender': 0.5, 'age': 0.25, 'boots': 0.5}
    figures = []
    real_subplots = report.plt.subplots
    monkeypatch.setattr(report.plt, 'subplots',
                        lambda *args, **kwargs: figures.append(real_subplots(*args, **kwargs))
                        or figures[-1])
    assert report.plot_attributes(runs, tmp_path / 'attributes.png')
    (_, ax), = figures
    heights = [[bar.get_height() for bar in bars] for bars in ax.containers]
    # no bar where a series lacks the attribute
    assert heights[0][:2] == [60, 60] and math.isnan(heights[0][2])
    assert math.isnan(heights[1][1]) and [heights[1][0], heights[1][2]] == [80, 60]
