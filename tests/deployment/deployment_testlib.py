"""Helpers of the deployment tests."""
import importlib.util
import os.path as osp

from tools_testlib import ROOT


def load_tool(name):
    """tools/deployment/NAME.py as a module, so its main(argv) runs in the test's process (no
    interpreter start-up and mmdet import per call)."""
    spec = importlib.util.spec_from_file_location(f'deployment_{name}',
                                                  osp.join(ROOT, 'tools', 'deployment', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
