"""The Python + PyTorch twin of `layerlens extract` on one image: load
ResNet-18 weights, read and preprocess the image (torchvision's ImageNet
transforms), run the model with a forward hook on `layer2` (the usual way,
seed 001), write the activation to a safetensors file.

    python scripts/bench/one_image_torch.py WEIGHTS.safetensors IMAGE OUT.safetensors

scripts/bench/one-image.sh times it from process start to file written,
next to the layerlens command doing the same.
"""
import os
import sys

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms

weights, image, out = sys.argv[1:4]
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
model = torchvision.models.resnet18(weights=None)
missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
assert not unexpected and all("num_batches" in k for k in missing), (missing, unexpected)
model.eval()
feats = {}
model.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("layer2", o))
preprocess = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
x = preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
with torch.no_grad():
    model(x)
save_file({"layer2": feats["layer2"].contiguous()}, out)
