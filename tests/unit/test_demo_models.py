"""Saving a model: whole files, even when several processes or threads save the same one at once."""

from __future__ import annotations

import threading

import openvino as ov

from gateway.demo_models import save, simple_model


def test_concurrent_saves_of_one_model_leave_whole_files_and_nothing_else(tmp_path):
    folder = tmp_path / "simple" / "1"
    threads = [threading.Thread(target=save, args=(simple_model(), folder)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml"]
    model = ov.Core().read_model(folder / "model.xml")
    assert [p.get_any_name() for p in model.inputs] == ["INPUT0", "INPUT1"]
