"""Classify images with a retrained model: one CSV row per image.

    python predict.py --model output/final/model data/test/7
    python predict.py --model output/final/model a.png b.jpg --output predictions.csv

Images are read as training reads them (OpenCV, grey or colour as the model
was trained, resized to its size). Folders are searched recursively. A file
that cannot be read as an image gets a row with its `error` filled in.
"""
import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep stderr for the command's own lines

from absl import app, flags  # noqa: E402

from src import serving  # noqa: E402

flags.DEFINE_string("model", None, "The model folder written by main_child_trainer.py "
                    "(OUTPUT_DIR/model).")
flags.DEFINE_string("output", None, "Write the CSV to this file instead of stdout.")
flags.DEFINE_integer("batch_size", 256, "Images classified at once.")
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("give at least one image or folder")
    try:
        model = serving.load_model(FLAGS.model)
        out = open(FLAGS.output, "w", newline="") if FLAGS.output else sys.stdout
    except (serving.ModelError, OSError) as error:
        print(f"error: {getattr(error, 'strerror', None) or error}"
              f"{': ' + FLAGS.output if isinstance(error, OSError) else ''}", file=sys.stderr)
        sys.exit(2)
    files = serving.list_files(inputs)
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(serving.CSV_HEADER)
        for row in serving.prediction_rows(model, files, FLAGS.batch_size):
            writer.writerow(row)
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    app.run(main)
