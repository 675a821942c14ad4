"""Manual GUI check (not a unit test): screenshots of the project window and of the cryoAI ab initio form.

Run under a virtual display, with the Scipion variables of the README::

    Xvfb :99 -screen 0 1600x1000x24 &
    DISPLAY=:99 python -m cryoai_scipion.tests.gui_screenshot OUTDIR

It prints where "cryoAI ab initio" sits in the protocol tree and writes OUTDIR/project.png (the project
window, as ``scipion3 project`` opens it) and OUTDIR/form_abinitio.png / form_predict.png (the forms,
advanced parameters shown).
"""
import os
import subprocess
import sys
import time

from PIL import ImageGrab

PROJECT = "CryoAIGuiCheck"
SETTLE_SECONDS = 12


def treePaths(domain) -> list:
    """'view/section/.../label' of every cryoAI protocol in the GUI's protocol tree."""
    import pyworkflow as pw
    from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
    views = ProtocolTreeConfig.load(domain, pw.Config.SCIPION_PROTOCOLS)
    found = []

    def walk(node, path):
        for child in node.childs:
            label = str(child.value) if child.text == "default" and child.value else str(child.text)
            if child.value and "CryoAI" in str(child.value):
                found.append("/".join(path + [label]) + f" ({child.tag})")
            walk(child, path + [label])

    for name, view in views.items():
        walk(view, [name])
    return found


def grabFormWindow(protocol, path: str):
    from pyworkflow.gui.form import FormWindow
    window = FormWindow(f"Protocol Run: {protocol.getClassName()}", protocol, lambda *args: None)
    window.adjustSize()

    def grab():
        window.root.update()
        ImageGrab.grab(xdisplay=os.environ["DISPLAY"]).save(path)
        window.root.quit()

    window.root.after(SETTLE_SECONDS * 300, grab)
    window.show(center=True)


def main(outdir: str):
    os.makedirs(outdir, exist_ok=True)
    import pyworkflow as pw
    from pyworkflow.project import Manager
    domain = pw.Config.getDomain()
    for path in treePaths(domain):
        print("tree:", path)
    manager = Manager()
    project = (manager.loadProject(PROJECT) if manager.hasProject(PROJECT)
               else manager.createProject(PROJECT))
    pw.Config.SCIPION_EXPERT_LEVEL = 1
    from cryoai_scipion.protocols import CryoAIProtAbinitio
    protocol = project.newProtocol(CryoAIProtAbinitio)
    protocol.expertLevel.set(1)
    grabFormWindow(protocol, os.path.join(outdir, "form_abinitio.png"))
    gui = subprocess.Popen([sys.executable, "-m", "scipion", "project", PROJECT])
    try:
        time.sleep(SETTLE_SECONDS)
        ImageGrab.grab(xdisplay=os.environ["DISPLAY"]).save(os.path.join(outdir, "project.png"))
    finally:
        gui.terminate()
        gui.wait(timeout=30)
    print("screenshots in", outdir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gui_screenshots")
