"""Form wizards of the cryoAI protocols."""
from pwem.constants import UNIT_ANGSTROM
from pwem.wizards.wizard import ParticleMaskRadiusWizard

from cryoai_scipion.protocols import CryoAIProtAbinitio

DEFAULT_RADIUS_FRACTION = 0.45
"""Starting mask radius, as a fraction of the box, when the form holds no radius yet."""


class CryoAIMaskRadiusWizard(ParticleMaskRadiusWizard):
    """Draw the circular mask on a few input particles and pick its radius in Å."""
    _targets = [(CryoAIProtAbinitio, ["maskRadiusA"])]

    def _getProvider(self, protocol):
        return self._getListProvider(protocol.inputParticles)

    @staticmethod
    def startRadiusAngstrom(protocol) -> float:
        """The radius the dialog opens with: the form's value, else 45 % of the box."""
        radius = protocol.maskRadiusA.get()
        if radius is not None and radius > 0:
            return radius
        particles = protocol.inputParticles.get()
        return round(DEFAULT_RADIUS_FRACTION * particles.getXDim() * particles.getSamplingRate())

    def show(self, form, *args):
        if form.protocol.inputParticles.get() is None:
            return ParticleMaskRadiusWizard.show(self, form, -1, "maskRadiusA", units=UNIT_ANGSTROM)
        ParticleMaskRadiusWizard.show(self, form, self.startRadiusAngstrom(form.protocol), "maskRadiusA",
                                      units=UNIT_ANGSTROM)
