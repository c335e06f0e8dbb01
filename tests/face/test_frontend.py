"""`widgets.has_frontend()` in real kernels, asked the way each client asks: papermill and nbval
(static figures), `jupyter console` (jupyter_client, no comm: static figures), JupyterLab's execute
requests (widgets), and a Lab without the widgets extension, which closes every widget's comm
(widgets once, static figures after). Lab itself, in a browser, is tests/face/test_browser.py."""
import subprocess
import sys

import nbformat
import papermill
import pytest
from jupyter_client.manager import start_new_kernel

ASK = "from patchgd_kit.face import widgets\nprint(widgets.has_frontend())"
# What JupyterLab 4 sends with a notebook cell's execute request (NotebookActions.run → CodeCell.execute).
LAB_METADATA = {"deletedCells": [], "recordTiming": False, "cellId": "c0ffee"}


def _notebook(path, outputs=()):
    cell = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n" + ASK, outputs=list(outputs), execution_count=1)
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_papermill_gets_static_figures(tmp_path):
    out = papermill.execute_notebook(str(_notebook(tmp_path / "ask.ipynb")), str(tmp_path / "out.ipynb"),
                                     kernel_name="python3", progress_bar=False)
    assert out.cells[0].outputs[0]["text"] == "False\n"


def test_nbval_gets_static_figures(tmp_path):
    """The cell's stored output "False" must match what nbval's run prints."""
    path = _notebook(tmp_path / "ask.ipynb", [nbformat.v4.new_output("stream", name="stdout", text="False\n")])
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                          "-p", "no:cacheprovider", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.fixture(scope="module")
def kernel():
    manager, client = start_new_kernel(kernel_name="python3")  # channels started with stdin, as jupyter console
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def _execute(client, code, metadata=None):
    """Send one execute request and return its iopub messages, up to idle."""
    if metadata is None:  # exactly what jupyter console sends (allow_stdin true, no metadata)
        msg_id = client.execute(code)
    else:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": True, "stop_on_error": True}
        request = client.session.msg("execute_request", content, metadata=metadata)
        client.shell_channel.send(request)
        msg_id = request["header"]["msg_id"]
    messages = []
    while not messages or messages[-1]["content"].get("execution_state") != "idle":
        message = client.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") == msg_id:
            messages.append(message)
    client.get_shell_msg(timeout=120)
    return messages


def _printed(messages):
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


def test_jupyter_console_gets_static_figures(kernel):
    assert _printed(_execute(kernel, ASK)) == "False\n"


def test_lab_gets_widgets_until_its_frontend_closes_their_comms(kernel):
    assert _printed(_execute(kernel, ASK, LAB_METADATA)) == "True\n"
    shown = _execute(kernel, "import numpy as np\nwidgets.z_filling_player(np.zeros((64, 64, 3), np.uint8), "
                             "np.zeros((2, 2, 3)), 32)", LAB_METADATA)
    opened = [m["content"]["comm_id"] for m in shown
              if m["msg_type"] == "comm_open" and m["content"]["target_name"] == "jupyter.widget"]
    assert opened and any(m["msg_type"] == "display_data" for m in shown)
    assert _printed(_execute(kernel, ASK, LAB_METADATA)) == "True\n"  # a widget manager keeps the comms open
    for comm_id in opened:  # what a Lab without the widgets extension does with a comm of an unknown target
        kernel.shell_channel.send(kernel.session.msg("comm_close", {"comm_id": comm_id, "data": {}}))
    assert _printed(_execute(kernel, ASK, LAB_METADATA)) == "False\n"
