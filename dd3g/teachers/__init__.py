"""Multi-view diffusion teachers behind one interface (`MultiViewTeacher`).

`dd3g` never loads a teacher at import; the pipeline never imports this package (only the teacher's scheduler
settings travel with a student).
"""

from .base import MultiViewTeacher, SimulationResult, TeacherCondition

__all__ = ["MultiViewTeacher", "SimulationResult", "TeacherCondition"]
