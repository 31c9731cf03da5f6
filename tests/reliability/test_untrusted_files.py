"""Files never run code: crafted CIFAR batches, recipes naming torch.hub or user code without the
user's opt-in, pruned models naming a factory. Each refusal creates no marker file."""

from __future__ import annotations

import copy
import os
import codecs
import pickle
import sys

import numpy as np
import pytest
import torch
import yaml

from prunetune.cli import main
from prunetune.data import load_dataset
from prunetune.data._unpickle import restricted_loads
from prunetune.exceptions import DataError, UntrustedCodeError
from prunetune.models import create_model
from reliability_helpers import TINY_RECIPE


class _Open:
    """Unpickling this creates ``path`` through builtins.open."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    """Unpickling this runs a shell command through os.system."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _cifar10_folder(root, crafted: bytes):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(3, 3072), dtype=np.uint8), b"labels": [0, 1, 2]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "data_batch_3").write_bytes(crafted)
    return folder


@pytest.mark.parametrize("payload", [_Open, _System], ids=["builtins.open", "os.system"])
def test_a_crafted_cifar_batch_runs_nothing(tmp_path, payload, capfd, monkeypatch) -> None:
    marker = tmp_path / "MARKER-pickle"
    crafted = pickle.dumps({b"data": payload(str(marker)), b"labels": [0]}, protocol=2)
    _cifar10_folder(tmp_path / "c", crafted)
    with pytest.raises(DataError, match=r"data_batch_3: cannot unpickle \(it refers to .*(open|system)"):
        load_dataset("cifar10", root=tmp_path / "c", val_size=0)
    assert not marker.exists()
    recipe = {**copy.deepcopy(TINY_RECIPE), "data": {"name": "cifar10", "root": "c", "val_size": 0},
              "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(["prune", "--recipe", "r.yaml", "--out", "p.pt"]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "malformed CIFAR batch file" in err[0], err
    assert not marker.exists() and not (tmp_path / "p.pt").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_batches_still_load_under_every_protocol(protocol) -> None:
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251, b"labels": [3, 7],
             b"fine_labels": np.array([1, 2], dtype=np.int64), b"batch_label": b"training batch 1 of 5",
             b"filenames": [b"a.png", b"b.png"], b"count": np.int64(2), b"names": {"x", "y"}}
    loaded = restricted_loads(pickle.dumps(batch, protocol=protocol))
    assert np.array_equal(loaded[b"data"], batch[b"data"]) and loaded[b"labels"] == [3, 7]
    assert np.array_equal(loaded[b"fine_labels"], batch[b"fine_labels"]) and loaded[b"count"] == 2
    assert loaded[b"names"] == {"x", "y"} and loaded[b"filenames"] == [b"a.png", b"b.png"]


def test_old_numpy_module_names_load() -> None:
    """The official archive was written by Python 2 and old numpy: numpy.core.multiarray._reconstruct."""
    batch = {b"labels": [1, 2], b"data": np.array([[7, 9]], dtype=np.uint8)}
    payload = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in payload
    loaded = restricted_loads(payload)
    assert loaded[b"labels"] == [1, 2] and loaded[b"data"].tolist() == [[7, 9]]
    # the oldest dtype states: version 1 (1, order, subarray, fields, size, alignment), version 0 without it
    v3 = b"(K\x03X\x01\x00\x00\x00|"
    assert payload.count(v3) == 1
    for older in (b"(K\x01X\x01\x00\x00\x00|NNJ\xff\xff\xff\xffJ\xff\xff\xff\xfft",
                  b"(X\x01\x00\x00\x00|NNJ\xff\xff\xff\xffJ\xff\xff\xff\xfft"):
        i = payload.index(v3)
        j = payload.index(b"t", payload.index(b"K\x00", i + len(v3))) + 1  # (3, '|', None, None, None, -1, -1, 0)
        assert restricted_loads(payload[:i] + older + payload[j:])[b"data"].tolist() == [[7, 9]]
    # Python 2 wrote the dtype's name and byte order as str (SHORT_BINSTRING), read back as bytes
    py2 = payload.replace(b"X\x02\x00\x00\x00u1", b"U\x02u1").replace(b"X\x01\x00\x00\x00|", b"U\x01|")
    assert py2.count(b"U\x02u1") == 1 and py2.count(b"U\x01|") == 1
    loaded = restricted_loads(py2)
    assert type(loaded[b"data"]) is np.ndarray and loaded[b"data"].tolist() == [[7, 9]]


class _Call:
    """Pickles as ``fn(*args)``: how a crafted file asks an admitted global for memory."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _numpy_core():
    return getattr(np, "_core", None) or np.core


@pytest.mark.parametrize("name, crafted, message", [
    ("bytearray(n)", lambda: _Call(bytearray, 4 * 2**30), "asks for 4294967296 bytes of memory"),
    ("bytes(n)", lambda: _Call(bytes, 10**10), "asks for 10000000000 bytes of memory"),
    # the array class handed to _reconstruct, with a shape: 241 KB of these gave a 95 000-image split
    ("_reconstruct", lambda: _Call(_numpy_core().multiarray._reconstruct, np.ndarray, (40000, 3072), b"B"),
     "asks for 122880000 bytes of memory"),
    ("scalar without bytes", lambda: [_Call(_numpy_core().multiarray.scalar, np.dtype("V200000000"))] * 5,
     "asks for 200000000 bytes of memory"),
    ("codecs hex", lambda: _Call(codecs.encode, _Call(codecs.encode, b"A", "hex"), "hex"),
     "encodes with 'hex'; pickled bytes use latin1 only"),
    ("str of list", lambda: _Call(str, _Call(list, "A" * 10)), "which a data archive never holds"),
])
def test_a_small_batch_file_cannot_ask_for_much_memory(name, crafted, message) -> None:
    """Each admitted call that allocates from a number is held to a few times the file's size; the
    calls real batch files never make (str, list, a 'hex' codec) are refused."""
    payload = pickle.dumps(crafted(), protocol=2)
    assert len(payload) < 1000
    with pytest.raises(pickle.UnpicklingError, match=message):
        restricted_loads(payload)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(text: str) -> bytes:
    return b"X" + len(text).to_bytes(4, "little") + text.encode()


_EMPTY_ARRAY = (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
                + b"K\x00\x85" + b"C\x01b" + b"\x87R")  # _reconstruct(ndarray, (0,), b'b'): 0 bytes


def _dtype(name: str) -> bytes:
    return _global("numpy", "dtype") + _unicode(name) + b"\x89\x88\x87R"  # dtype(name, False, True)


def _array_state(shape: int, dtype: bytes, raw: bytes) -> bytes:  # BUILD (1, (shape,), dtype, False, raw)
    return b"(K\x01" + pickle.dumps((shape,), 2)[2:-1] + dtype + b"\x89" + raw + b"tb"


# BUILD hands a state to what a pickle made; numpy's own __setstate__ trusts it
_REBUILT = {
    # an object array of 10 entries from an empty list: numpy read past the list (segmentation fault)
    "object array": (_EMPTY_ARRAY + _array_state(10, _dtype("O8"), b"]") + b".", "holds Python objects"),
    # 10 GB of zeros asked for by a 90-byte file
    "huge shape": (_EMPTY_ARRAY + _array_state(10**10, _dtype("u1"), b"C\x00") + b".", "asks for 10000000000 bytes"),
    "short bytes": (_EMPTY_ARRAY + _array_state(8, _dtype("u1"), b"C\x02ab") + b".", "of 8 bytes from 2 bytes"),
    # a harmless dtype whose state then says 'holds objects' (flags 0x1F), used by an array
    "dtype state": (_dtype("V8") + b"(K\x03" + _unicode("|") + b"NNNK\x08K\x01K\x1ftb" + b"q\x010" + _EMPTY_ARRAY
                    + b"(K\x01K\x01\x85h\x01\x89]tb.", "rewrites numpy dtype '|V8'"),
    "built twice": (_EMPTY_ARRAY + _array_state(1, _dtype("u1"), b"C\x01a") + _array_state(1, _dtype("u1"), b"C\x01a")
                    + b".", "rebuilds one numpy array twice"),
    # numpy.ndarray called on a bytearray the pickle then grows (APPENDS calls extend): the array kept
    # the freed pointer, and SETITEM wrote into the heap
    "array on a buffer": (pickle.dumps(_Call(np.ndarray, (4,), "u1", _Call(bytearray, 4)), 2),
                          "builds a numpy array on a buffer"),
    # one call repeated from the memo: 8 × 600 KB from a file of about a hundred bytes
    "repeated calls": (pickle.dumps([_Call(bytearray, 600_000) for _ in range(8)], 2), "asks for 1200000 bytes"),
    "subarray dtype": (_EMPTY_ARRAY + _array_state(1, _dtype("(1000,1000)u1"), b"C\x00") + b".",
                       "data archives hold plain numbers"),
    "zero-size dtype": (_EMPTY_ARRAY + _array_state(10**12, _dtype("S0"), b"C\x00") + b".",
                        "data archives hold plain numbers"),
}


def test_a_batch_file_cannot_rebuild_an_array_into_what_data_never_is() -> None:
    """Each payload in a child process: before the check, the first crashed the interpreter."""
    import subprocess

    code = ("import pickle, sys\nfrom prunetune.data._unpickle import restricted_loads\n"
            "for name, payload in eval(sys.stdin.read()).items():\n"
            "    try:\n        restricted_loads(payload)\n        print(name, '| LOADED', flush=True)\n"
            "    except pickle.UnpicklingError as exc:\n        print(name, '|', exc, flush=True)\n")
    payloads = {name: payload for name, (payload, _) in _REBUILT.items()}
    assert all(len(p) < 200 for p in payloads.values())
    done = subprocess.run([sys.executable, "-c", code], input=repr(payloads), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    lines = dict(line.split(" | ", 1) for line in done.stdout.splitlines())
    for name, (_, message) in _REBUILT.items():
        assert message in lines.get(name, ""), (name, lines.get(name))


def _factory_module(folder, name: str):
    (folder / f"{name}.py").write_text(
        "open('MARKER-factory', 'w').close()\n"
        "from prunetune.models import create_model\n"
        "def build(num_classes=10, in_channels=3):\n"
        "    return create_model('tiny_resnet', num_classes=num_classes, in_channels=in_channels)\n")


def test_user_code_runs_only_with_the_opt_in(tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _factory_module(tmp_path, "factory_opt_in")
    capfd.readouterr()
    assert main(["groups", "--model", "factory_opt_in:build", "--in-channels", "1", "--input-size", "8"]) == 2
    err = capfd.readouterr().err
    assert "--allow-code" in err and not (tmp_path / "MARKER-factory").exists()
    assert "factory_opt_in" not in sys.modules  # not even imported
    assert main(["groups", "--model", "factory_opt_in:build", "--in-channels", "1", "--input-size", "8",
                 "--allow-code"]) == 0
    assert (tmp_path / "MARKER-factory").exists()


def test_torch_hub_is_refused_even_with_the_opt_in(tmp_path, monkeypatch) -> None:
    repo = tmp_path / "hubrepo"
    repo.mkdir()
    marker = tmp_path / "MARKER-hub"
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef load(**kw):\n    return None\n")
    for allow in (False, True):
        with pytest.raises(UntrustedCodeError, match="torch.hub"):
            create_model("torch.hub:load", allow_code=allow, repo_or_dir=str(repo), source="local", model="load")
    with pytest.raises(UntrustedCodeError, match="builtins"):
        create_model("builtins:exec", allow_code=True)
    with pytest.raises(UntrustedCodeError, match="torch:load"):
        create_model("torch:load", allow_code=True)
    assert not marker.exists()


def test_allow_code_comes_from_the_search_config_never_from_a_recipe(tmp_path) -> None:
    pytest.importorskip("ray")
    from prunetune.recipes.schema import Recipe
    from prunetune.search import parse_search_config

    base = {k: v for k, v in copy.deepcopy(TINY_RECIPE).items() if k not in ("criterion", "allocation")}
    base["model"] = {"name": "factory_x:build", "num_classes": 10, "in_channels": 1}
    config = parse_search_config({"recipe": base, "macs_budget": 0.5, "allow_code": True}, cwd=tmp_path)
    assert config.recipe.allow_code and config.settings.allow_code
    assert "allow_code" not in config.recipe.to_dict()  # an exported recipe does not carry it
    assert not Recipe.from_dict(config.recipe.to_dict(), base=True).allow_code  # a base recipe: no allocation
    with pytest.raises(UntrustedCodeError, match="not read from a recipe"):
        Recipe.from_dict({**config.recipe.to_dict(), "allow_code": True})


def test_a_pruned_model_file_naming_a_factory_needs_the_opt_in(tmp_path, monkeypatch) -> None:
    from prunetune import load_pruned
    from prunetune.recipes.pruned_file import save_pruned
    from prunetune.pruning.groups import find_groups
    from prunetune.pruning.plan import make_plan

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _factory_module(tmp_path, "factory_pruned")
    model = create_model("tiny_resnet", in_channels=1)
    groups = find_groups(model, (1, 8, 8))
    plan = make_plan(groups, {g.name: torch.arange(g.channels, dtype=torch.float32) for g in groups},
                     groups.dense_keep())
    save_pruned(tmp_path / "p.pt", model, plan, {"name": "factory_pruned:build", "num_classes": 10,
                                                  "in_channels": 1, "kwargs": {}})
    with pytest.raises(UntrustedCodeError, match="--allow-code"):
        load_pruned(tmp_path / "p.pt")
    assert not (tmp_path / "MARKER-factory").exists()
    assert load_pruned(tmp_path / "p.pt", allow_code=True)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize("command", ["deploy", "bench"])
def test_deploy_and_bench_take_the_opt_in_their_error_asks_for(tmp_path, monkeypatch, capfd, command) -> None:
    # the refusal says "pass --allow-code": the command it comes from must accept that flag
    from prunetune.recipes.pruned_file import save_pruned
    from prunetune.pruning.groups import find_groups
    from prunetune.pruning.plan import make_plan

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _factory_module(tmp_path, f"factory_{command}")
    model = create_model("tiny_resnet", in_channels=1)
    groups = find_groups(model, (1, 8, 8))
    plan = make_plan(groups, {g.name: torch.arange(g.channels, dtype=torch.float32) for g in groups},
                     groups.dense_keep())
    save_pruned(tmp_path / "p.pt", model, plan, {"name": f"factory_{command}:build", "num_classes": 10,
                                                  "in_channels": 1, "kwargs": {}})
    args = (["deploy", "--model", "p.pt", "--format", "torchscript", "--out", "p.ts"] if command == "deploy"
            else ["bench", "--model", "p.pt", "--batch", "1", "--min-time", "0.01"])
    capfd.readouterr()
    assert main(args) == 2
    assert "--allow-code" in capfd.readouterr().err and not (tmp_path / "MARKER-factory").exists()
    assert main([*args, "--allow-code"]) == 0
    assert (tmp_path / "MARKER-factory").exists()
