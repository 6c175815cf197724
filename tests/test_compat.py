"""The compatibility shims make fast-reid 1.4.0 import on today's stack, and patch nothing else."""
import collections
import collections.abc
import subprocess
import sys


def test_fastreid_modules_import_after_compat():
    code = (
        "import unipt_plugin.compat as c\n"
        "import fastreid.engine, fastreid.data, fastreid.evaluation, fastreid.modeling, fastreid.solver\n"
        "from fastreid.data.build import fast_batch_collator\n"
        "print(sorted(c.INSTALLED))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # On torch 2.x / Python 3.11 exactly these two names are missing, and only they are provided.
    assert out.stdout.strip() == "['collections.Mapping', 'torch._six']"


def test_fastreid_fails_without_compat():
    """Guards the premise: if fast-reid ever imports cleanly, the shims are no longer needed."""
    code = "import fastreid.data"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "torch._six" in out.stderr or "Mapping" in out.stderr


def test_shims_point_at_the_real_objects():
    import unipt_plugin.compat as compat

    import torch._six  # noqa: F401  (provided by the shim)

    assert collections.Mapping is collections.abc.Mapping
    assert sys.modules["torch._six"].string_classes == (str,)
    assert compat.apply() == []  # idempotent: a second call installs nothing
