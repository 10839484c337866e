"""Tiny script-mode entry points that exercise the SageMaker contract in tests (both backends).

The training script packs its inference script into `code/` of the model, as the platform's own training
scripts do, so the model archive it produces can be served.
"""

import textwrap

TRAIN_SCRIPT = textwrap.dedent(
    """
    import argparse, json, os, pathlib, shutil, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    args, _ = parser.parse_known_args()
    if json.loads(os.environ["SM_HPS"]).get("fail") == "yes":
        pathlib.Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text("ValueError: the data is bad on line 3")
        sys.exit(1)
    seen = {k: v for k, v in os.environ.items() if k.startswith("SM_")}
    channel = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"])
    rows = sum(len(p.read_text().splitlines()) for p in channel.glob("*.csv"))
    model_dir = pathlib.Path(os.environ["SM_MODEL_DIR"])
    (model_dir / "model.json").write_text(json.dumps({"epochs": args.epochs, "lr": args.lr, "rows": rows, "env": seen,
                                                      "argv": sys.argv, "cwd": os.getcwd()}))
    (model_dir / "code").mkdir()
    shutil.copyfile(pathlib.Path(__file__).with_name("inference.py"), model_dir / "code" / "inference.py")
    pathlib.Path(os.environ["SM_OUTPUT_DATA_DIR"], "report.txt").write_text("ok")
    print(f"epoch 1 loss=0.9"); print(f"epoch 2 loss=0.4")
    print(f"validation:rmse={0.25}")
    """
)

INFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, pathlib
    def model_fn(model_dir):
        return json.loads((pathlib.Path(model_dir) / "model.json").read_text())
    def input_fn(body, content_type):
        if content_type != "text/csv":
            raise ValueError(f"cannot read {content_type}")
        return [line.split(",") for line in body.splitlines()]  # text/csv arrives as str, as from the toolkit
    def predict_fn(rows, model):
        if any(r[1] == "boom" for r in rows):
            raise ValueError("cannot score 'boom'")
        return [(r[0], float(r[1]) * model["lr"]) for r in rows]
    def output_fn(prediction, accept):
        return "".join(f"{i},{v}\\n" for i, v in prediction)
    """
)
