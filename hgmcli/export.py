"""``hgm export``: the learned network and its classifier as one plain
``torch.nn.Sequential`` (the paper's point: the output is a vanilla CNN),
saved so that it runs without hgm installed."""

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


def export(*, model: str | Path | None, classifier: str | Path, out: str | Path) -> StageResult:
    """The network + classifier as one TorchScript nn.Sequential, runnable without hgm."""

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
                "dtype": "uint8 or float32 pixel values as stored in the dataset (CIFAR-10: 0..255)",
                "preprocessing": f"done inside the model: (x * {pre['scale']:.6g} - mean) / std per channel",
                "mean": pre["mean"],
                "std": pre["std"],
            },
            "output": {"logits": len(payload["label_names"]), "label_names": payload["label_names"],
                       "predict": "argmax"},
            "blocks": nmeta.get("blocks", []),
            "classifier": payload["kind"],
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices: TorchScript still loads without hgm
            scripted = torch.jit.script(seq)

        def save(path: Path, _meta) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                artifacts.write_file(path, lambda tmp: torch.jit.save(scripted, str(tmp),
                                                                      _extra_files={"hgm.json": json.dumps(info)}))

        summary = [
            ("layers", " -> ".join(type(m).__name__ for m in seq)),
            ("input", f"{'x'.join(map(str, net.input_shape))} ({info['input']['preprocessing']})"),
        ]
        return Produced(save, {"info": info}, summary)

    return run_stage("export", body, out=out, device=None, inputs={"model": model, "classifier": classifier})
