"""Shared fixtures; the plain helper functions are in helpers.py."""

from __future__ import annotations

import getpass
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import SSHD, TORCH, import_blocker, start_sshd


def pytest_ignore_collect(collection_path, config):
    """Under `-m "not slow"`, a test module whose own first mark makes every test in it slow
    (a line `pytestmark = pytest.mark.slow`) is not imported at all: importing those modules
    (torch, transformers and their models) took a fifth of the fast run, to deselect every test
    they hold. Any other run collects them as usual, so `-m slow` and `-m "not slow"` still add
    up to the whole suite."""
    if config.option.markexpr != "not slow" or not collection_path.name.startswith("test_"):
        return None
    if collection_path.suffix != ".py":
        return None
    text = collection_path.read_text(encoding="utf-8")
    return True if re.search(r"^pytestmark = pytest\.mark\.slow\b", text, re.MULTILINE) else None


@pytest.fixture
def block_imports(tmp_path):
    """block_imports("matplotlib") -> an env in which `import matplotlib` fails; by default
    torch and its companions, as on a Pi with only the core install."""

    def env(*modules: str) -> dict:
        return {"PYTHONPATH": import_blocker(tmp_path / "blocked", modules or TORCH)}

    return env


# ---- real OpenSSH servers on 127.0.0.1 for the device tests (test_remote, test_deploy) --------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A host key, a user key authorized to log in, and the ssh options that use them."""
    d = tmp_path_factory.mktemp("ssh")
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
            check=True,
            timeout=30,
        )
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    (d / "known_hosts").write_text("")
    return d


@pytest.fixture(scope="module")
def ssh_env(keys):
    """EDGEKIT_SSH_OPTIONS for the test servers: our key and known_hosts, no user ssh config."""
    options = [
        "-F", "/dev/null", "-i", str(keys / "user_key"), "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={keys / 'known_hosts'}",
    ]  # fmt: skip
    return {"EDGEKIT_SSH_OPTIONS": shlex.join(options)}


@pytest.fixture(scope="module")
def ssh_target(keys, tmp_path_factory):
    """One real sshd on 127.0.0.1 as an ssh:// target (with `ssh_env`), stopped at teardown."""
    if not Path(SSHD).exists():
        pytest.skip("needs the OpenSSH server (sshd): apt-get install openssh-server")
    proc, port = start_sshd(keys, tmp_path_factory.mktemp("sshd") / "one")
    yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


# ---- language models (issue 23) ------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory):
    """A 2-layer LlamaForCausalLM folder with random weights and its own BPE tokenizer, as
    save_pretrained writes it (tests/models.py: tiny_llama)."""
    from models import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("lm") / "tiny-llama", context=1024, chat=True)


@pytest.fixture(scope="session")
def tiny_llama_variants(tmp_path_factory):
    """The tiny Llama (context 1024, with a chat template) as onnxruntime-genai folders made by
    its model builder: {"fp32": folder, "int4": folder}."""
    from models import genai_folder, tiny_llama

    root = tmp_path_factory.mktemp("lm-variants")
    hf = tiny_llama(root / "hf", context=1024, chat=True)
    return {p: genai_folder(hf, root / p, p) for p in ("fp32", "int4")}


LM_QUICK = ("--min-time", "0.2", "--max-time", "0.5")


@pytest.fixture(scope="session")
def tiny_llama_heldout(tmp_path_factory):
    """Held-out text for the tiny Llama: sentences of its training words in another order."""
    import random

    from models import TINY_LLAMA_TEXT

    words = TINY_LLAMA_TEXT.split()
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("lm-text") / "heldout.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(1500)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_llama_optimized(tiny_llama_folder, tiny_llama_heldout, tmp_path_factory):
    """`edgekit optimize` on the tiny Llama through the real CLI, once per session: (the output
    folder, the CompletedProcess)."""
    from helpers import run_edgekit

    out = tmp_path_factory.mktemp("lm-optimize") / "out"
    result = run_edgekit(
        "optimize", tiny_llama_folder, "--data", tiny_llama_heldout, "-o", out, *LM_QUICK
    )
    assert result.returncode == 0, result.stderr
    return out, result
