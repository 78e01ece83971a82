"""After a real (non-editable) install, the ament index finds the package's launch files and YAML.

`pip install -e` does not install data_files, so this builds the wheel and installs it into a
temporary prefix, exactly as a deployment would, then asks ament_index_python in a fresh process.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_get_package_share_directory_finds_launch_files(tmp_path):
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip "replaces" the project's own editable install in the running
    # venv (uninstalling it there) even though the new files go to --prefix.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--ignore-installed", "--prefix", str(prefix), str(ROOT)], check=True, timeout=300,
                   cwd=tmp_path, capture_output=True)
    probe = ("from ament_index_python.packages import get_package_share_directory as g; import os;"
             "d = g('mot_policy'); print(d); print(sorted(os.listdir(os.path.join(d, 'launch'))));"
             "print(sorted(os.listdir(os.path.join(d, 'config'))))")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, check=True).stdout.splitlines()
    assert Path(out[0]) == prefix / "share" / "mot_policy"
    assert out[1] == str(["robot.launch.py", "sim.launch.py"])
    assert out[2] == str(["robot.yaml", "sim.yaml", "sim_topics.yaml"])
    assert (prefix / "share" / "mot_policy" / "package.xml").is_file()
    assert (prefix / "bin" / "policy_node").is_file(), "console scripts stay on PATH for the pip path"
    probe = "import importlib.metadata as m; print(m.distribution('mot-policy').read_text('direct_url.json'))"
    installed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                               cwd=tmp_path, check=True).stdout
    assert '"editable": true' in installed, "the venv's editable install survives the test"
