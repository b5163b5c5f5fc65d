"""The plugin: found through its entry point, listed by ``dispytch plugins`` with each
format's content type, and cheap to discover (fastavro imported only on first use)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from dispytch.plugins import serializer_for

DISPYTCH = shutil.which("dispytch") or str(Path(sys.executable).parent / "dispytch")


def test_dispytch_plugins_json_lists_both_avro_framings() -> None:
    out = subprocess.run(
        [DISPYTCH, "plugins", "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(out.stdout)
    (avro,) = [p for p in report["plugins"] if p["name"] == "avro"]
    assert avro["distribution"] == "dispytch-avro"
    assert avro["entry_point"] == "dispytch.avro.plugin"
    listed = {s["name"]: s["content_type"] for s in avro["serializers"]}
    assert listed == {
        "avro": "application/avro",
        "avro-confluent": "application/vnd.confluent.avro",
    }


def test_serializers_are_found_by_name_and_by_content_type() -> None:
    from dispytch.avro import AvroSerializer, ConfluentAvroSerializer

    assert isinstance(serializer_for("avro"), AvroSerializer)
    assert serializer_for("application/avro") is serializer_for("avro")
    assert isinstance(serializer_for("application/vnd.confluent.avro"), ConfluentAvroSerializer)


def test_discovery_and_import_do_not_import_fastavro() -> None:
    code = (
        "import sys, dispytch.plugins as p, dispytch.avro\n"
        "p.plugin_infos()\n"
        "assert 'fastavro' not in sys.modules, 'fastavro imported by discovery'\n"
        "p.serializer_for('avro')\n"
        "assert 'fastavro' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "ok"
