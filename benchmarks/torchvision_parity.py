"""torchvision's own models against their imported counterparts, logits and eval transform.

    .venv/bin/python benchmarks/torchvision_parity.py --torch-python /path/to/venv/bin/python \
        [--models resnet18,resnet50,vgg11_bn,alexnet] [--photo FILE.jpg]

The other interpreter must have torch, torchvision and safetensors (never this project's
install). For each model it builds torchvision's model with seeded random weights (batch-norm
statistics randomized too, so they matter), saves the state dict as safetensors, and runs it in
eval mode on a photo put through torchvision's eval transform (Resize(256), CenterCrop(224),
ToTensor, Normalize). Then this side runs `import-weights`, prepares the same photo with the
imported run's recorded eval pipeline (`Predictor.prepare`) and the model, and prints the largest
differences: input tensor and logits, and whether the top-5 classes agree.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TORCH_SIDE = textwrap.dedent('''
    import sys, numpy as np, torch, torchvision
    from PIL import Image
    from safetensors.torch import save_file
    from torchvision import transforms as T
    name, photo, out = sys.argv[1:4]
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.2, 0.2)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x = tf(Image.open(photo).convert("RGB"))[None]
    with torch.no_grad():
        logits = model(x).numpy()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out + ".safetensors")
    np.savez(out + ".npz", x=x.numpy(), logits=logits)
''')


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--torch-python", required=True)
    p.add_argument("--models", default="resnet18,resnet50,vgg11_bn,alexnet")
    p.add_argument("--photo", default=str(ROOT.parent / "shared/data/coco128/images/train2017/"
                                          "000000000009.jpg"))
    args = p.parse_args()
    from jaxvision.data.local import read_image
    from jaxvision.inference import load_predictor
    from jaxvision.tools.import_weights import import_weights
    print(f"photo {args.photo}\n| model | max abs input diff | max abs logit diff | logit scale "
          "| top-5 equal |\n|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            out = str(Path(tmp) / name)
            subprocess.run([args.torch_python, "-c", TORCH_SIDE, name, args.photo, out], check=True)
            ref = np.load(out + ".npz")
            import_weights(name, out + ".safetensors", Path(tmp) / f"run_{name}")
            predictor = load_predictor(Path(tmp) / f"run_{name}", batch_size=1)
            x = predictor.prepare({"image": read_image(args.photo, 3)})["image"]
            x_ref = ref["x"][0].transpose(1, 2, 0)
            # torchvision normalizes x/255 by mean/std in [0, 1]; ours (x - 255 mean) / (255 std).
            logits = predictor([{"image": x}])[0]["logits"]
            top = lambda z: list(np.argsort(-z)[:5])
            print(f"| {name} | {np.abs(x - x_ref).max():.2e} | "
                  f"{np.abs(logits - ref['logits'][0]).max():.2e} | "
                  f"{np.abs(ref['logits'][0]).max():.2e} | "
                  f"{top(logits) == top(ref['logits'][0])} |", flush=True)


if __name__ == "__main__":
    main()
