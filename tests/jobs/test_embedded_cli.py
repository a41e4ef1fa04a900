"""`--checkpoint embedded` from the command line: eval reads it, --calibrate refuses to write into it."""

from __future__ import annotations

from tests.helpers.cli_runner import invoke
from vip2scan.model import embedded


def test_calibrating_the_shipped_checkpoint_is_a_usage_error(tmp_path) -> None:
    before = embedded.file_hashes()
    ran = invoke("eval", str(tmp_path), "--checkpoint", "embedded", "--calibrate")
    assert ran.exit_code == 2
    assert "copy" in ran.stderr and str(embedded.EMBEDDED_DIR) in ran.stderr
    assert embedded.file_hashes() == before


def test_eval_reads_the_embedded_checkpoint(tmp_path) -> None:
    from vip2scan.model.data.synthetic import write_mvtec_tree

    root = write_mvtec_tree(str(tmp_path / "data"), categories=("tile",), n_good=2, n_defect=1, n_train=0,
                            size=112, defects=("blob",))
    ran = invoke("eval", root, "--checkpoint", "embedded", "--json", str(tmp_path / "m.json"))
    assert ran.exit_code == 0, ran.stderr[-2000:]
    assert embedded.read_provenance()["model_id"] in ran.stderr + ran.stdout
