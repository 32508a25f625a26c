"""Helpers of the deployment tests."""
from tools_testlib import load_script


def load_tool(name):
    """tools/deployment/NAME.py as a module, so its main(argv) runs in the test's process (no
    interpreter start-up and mmdet import per call)."""
    return load_script(f'tools/deployment/{name}.py', f'deployment_{name}')
