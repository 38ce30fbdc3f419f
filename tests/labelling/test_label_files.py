import torch

from spml_lab.data import datasets
from spml_lab.labelling import cam, label_files
from spml_lab.nets import tag_classifier


def test_write_pseudo_labels_round_trip(tmp_path):
    root = datasets.DATA_SAMPLES / "objects"
    torch.manual_seed(0)
    net = tag_classifier.TagClassifier(9, width=8).eval()
    for kind in ("tags", "boxes"):
        list_file = label_files.write_pseudo_labels(
            net, root, "val", kind, out_root=tmp_path, threshold=0.3, alpha=None
        )
        source = datasets.embedded("objects", "val", kind)
        written = datasets.SegmentationList(tmp_path, list_file, 9)
        assert len(written) == len(source) and written.has_superpixels
        for i in range(3):
            item, original = written[i], source[i]
            assert torch.equal(item["image"], original["image"])
            maps = net.cams(item["image"][None], size=item["image"].shape[-2:])
            rule = dict(threshold=0.3, alpha=None)
            if kind == "tags":
                want = cam.cam_pseudo_labels(maps, original["tags"][None], **rule)
            else:
                want = cam.box_pseudo_labels(maps, original["label"][None], **rule)
            assert torch.equal(item["label"], want[0].long())
