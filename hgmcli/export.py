"""``hgm export``: the learned network and its classifier as one plain
``torch.nn.Sequential`` (the paper's point: the output is a vanilla CNN),
saved so that it runs without hgm installed, in one of ``FORMATS``:

* ``torchscript``: ``torch.jit.load(path)`` (current PyTorch warns that
  TorchScript is deprecated, but it still needs nothing else);
* ``exported``: a ``torch.export`` ExportedProgram, ``torch.export.load(path).module()``;
* ``onnx``: for onnxruntime and other ONNX runtimes (needs the ``onnx`` extra).

The preprocessing (scaling, standardisation, whitening) is inside the
graph; the metadata (input shape and dtype, label names, the blocks) is
inside the file where the format allows it (``hgm.json`` extra file) and in
``<out>.json`` beside it for every format. The batch dimension is dynamic."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from . import artifacts
from .classify import load_classifier
from .errors import HgmError
from .network import load_network, network_from_payload
from .runner import Produced, StageResult, run_stage


def _torchscript(seq: torch.nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices: TorchScript still loads without hgm
        scripted = torch.jit.script(seq)
        torch.jit.save(scripted, str(path), _extra_files={"hgm.json": json.dumps(info)})


def _exported(seq: torch.nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(seq, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path), extra_files={"hgm.json": json.dumps(info)})


def _onnx(seq: torch.nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise HgmError("--format onnx needs the onnx packages: pip install 'hgmcli[onnx]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(seq, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)


FORMATS = {"torchscript": _torchscript, "exported": _exported, "onnx": _onnx}  # format -> (seq, example, path, info)


def export(*, model: str | Path | None, classifier: str | Path, out: str | Path,
           format: str = "torchscript") -> StageResult:
    """The network + classifier as one plain nn.Sequential, runnable without hgm (see FORMATS)."""
    if format not in FORMATS:
        raise HgmError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")

    def body(_dev, _ckpt) -> Produced:
        head, payload, cmeta = load_classifier(classifier)
        if model is not None:
            net, nmeta = load_network(model)
        elif "network" in payload:
            net, nmeta = network_from_payload(payload["network"], classifier), cmeta
        else:
            raise HgmError("--model is required: export needs the network the classifier was trained on")
        if list(net.output_shape()) != list(payload["input_shape"]):
            raise HgmError(f"{classifier} expects features of shape {payload['input_shape']} but {model} produces "
                           f"{net.output_shape()}")
        seq = torch.nn.Sequential(*net.to_sequential(), *head).eval()
        pre = net.preprocess.spec()
        info = {
            "hgm_version": artifacts.versions()["hgm"],
            "input": {
                "shape": ["B", *net.input_shape],
                "dtype": "float32 pixel values as stored in the dataset (CIFAR-10: 0..255); torchscript takes uint8 too",
                "preprocessing": f"done inside the model: (x * {pre['scale']:.6g} - mean) / std per channel",
                "mean": pre["mean"],
                "std": pre["std"],
            },
            "output": {"logits": len(payload["label_names"]), "label_names": payload["label_names"],
                       "predict": "argmax"},
            "blocks": nmeta.get("blocks", []),
            "classifier": payload["kind"],
        }
        info["format"] = format
        example = torch.zeros(2, *net.input_shape)  # float32 pixels, as the dataset stores them (uint8 works too
        # for torchscript); any batch size

        def save(path: Path, _meta) -> None:
            artifacts.write_file(path, lambda tmp: FORMATS[format](seq, example, tmp, info))
            artifacts.save_json(path.with_name(path.name + ".json"), info)

        summary = [
            ("layers", " -> ".join(type(m).__name__ for m in seq)),
            ("input", f"{'x'.join(map(str, net.input_shape))} ({info['input']['preprocessing']})"),
        ]
        return Produced(save, {"info": info}, summary, outputs={"metadata": Path(f"{out}.json")})

    return run_stage("export", body, out=out, device=None, inputs={"model": model, "classifier": classifier},
                     extra_outputs=(Path(f"{out}.json"),))
