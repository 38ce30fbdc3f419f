import torch

from spml_lab.nets import embedding_nets, tag_classifier


def test_classifier_shapes_and_cam_range():
    torch.manual_seed(0)
    net = tag_classifier.TagClassifier(5, width=8).eval()
    images = torch.rand(2, 3, 20, 28)
    logits = net(images)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits, net.raw_cams(images).mean(dim=(2, 3)))
    maps = net.cams(images, size=(20, 28))
    assert maps.shape == (2, 5, 20, 28)
    assert (maps[:, 0] == 0).all() and maps.min() >= 0 and maps.max() <= 1
    positive = net.raw_cams(images).clamp(min=0).amax(dim=(2, 3)) > 0
    peaks = maps[:, 1:].amax(dim=(2, 3))
    torch.testing.assert_close(peaks[positive], torch.ones_like(peaks[positive]), atol=1e-3, rtol=0)


def test_classifier_trunk_is_the_small_embedding_nets():
    # the CAM classifier reuses `embedding_nets.small_trunk`, parameter for parameter
    net = tag_classifier.TagClassifier(4, width=8, dilations=(1, 2))
    stem, trunk = embedding_nets.small_trunk(8, (1, 2))
    want = {f"stem.{k}": v.shape for k, v in stem.state_dict().items()}
    want |= {f"trunk.{k}": v.shape for k, v in trunk.state_dict().items()}
    got = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("classifier.")}
    assert got == want
    small = embedding_nets.SmallEmbeddingNet(8, width=8)
    assert [type(m) for m in net.stem.modules()] == [type(m) for m in small.stem.modules()]
