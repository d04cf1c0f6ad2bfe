"""Charts that overlay several summary tags in TensorBoard.

TensorBoard's scalar dashboard draws one chart per tag; its Custom Scalars dashboard draws the charts
that a layout summary describes, each overlaying every tag that matches its patterns (across runs).
"""

from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
import tensorflow as tf


def write_overlay_layout(directory, category, charts):
    """Writes a layout summary into `directory`: a category titled `category` with one chart per
    entry of `charts` ({title: [tag regular expressions]})."""
    layout = layout_pb2.Layout(category=[layout_pb2.Category(
        title=category,
        chart=[layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=tags))
               for title, tags in charts.items()])])
    summary = custom_scalar_summary.pb(layout)
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
    writer.close()
