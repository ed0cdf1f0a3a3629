"""EKAGen's global information self-distillation (GID), written from the paper's description.

A frozen teacher (a trained run) reads ADM-enhanced images; the student, of the same
architecture and vocabulary, reads plain images and learns from the reports and from the
teacher's softened word distributions at every position:
    loss = CE + kd_weight * T^2 * KL(teacher_T || student_T)     (reference T=4, kd_weight 0.01)
T^2 keeps the gradient scale of the soft term independent of T. After a round the student is the
next round's teacher (`rrg-stage distill --rounds R`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from stages.generation.models import GeneratorOutput
from stages.training.data import Batch, StudySource
from stages.training.model import ReportModel


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Mean over the positions where `mask` (B, T) is True of KL(softmax(teacher/T) || softmax(student/T))
    over the vocabulary; logits (B, T, vocab)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = (teacher.exp() * (teacher - student)).sum(dim=-1)
    weight = mask.to(per_position.dtype)
    return (per_position * weight).sum() / weight.sum().clamp(min=1.0)


class Teacher:
    """A trained model, frozen, that adds the distillation term to the student's training loss."""

    def __init__(self, model: ReportModel, temperature: float = 4.0, weight: float = 0.01):
        if temperature <= 0:
            raise ValueError(f"the distillation temperature must be > 0, got {temperature}")
        self.model, self.temperature, self.weight = model.eval(), temperature, weight
        for parameter in model.parameters():
            parameter.requires_grad_(False)

    def distil(self, output: GeneratorOutput, batch: Batch) -> GeneratorOutput:
        """The student's `output` on `batch` with the teacher's term added; the teacher reads
        `batch.teacher_views`."""
        if batch.teacher_views is None:
            raise ValueError("distillation batches carry the teacher's input in teacher_views")
        with torch.no_grad():
            teacher_logits = self.model(replace(batch, views=batch.teacher_views)).logits
        kd = distillation_loss(output.logits, teacher_logits, batch.target_mask[:, 1:], self.temperature)
        loss = output.loss + self.weight * self.temperature ** 2 * kd
        return GeneratorOutput(output.logits, loss, {**output.terms, "kd": kd.detach()})


class DistillationSource:
    """Training batches with the student's input in `views` and the teacher's in `teacher_views`
    (the same studies, crops and labels); validation batches from `evaluation`, the input the
    student is tested on."""

    def __init__(self, student: StudySource, teacher: StudySource, evaluation: StudySource):
        self.student, self.teacher, self.evaluation = student, teacher, evaluation
        self.data = student.data

    def rows(self, split: str) -> np.ndarray:
        return self.student.rows(split)

    def batch(self, rows: np.ndarray, *, train: bool = False, generator: torch.Generator | None = None) -> Batch:
        if not train:
            return self.evaluation.batch(rows)
        twin = None
        if generator is not None:  # the teacher's batch draws the same random crops
            twin = torch.Generator().manual_seed(0)
            twin.set_state(generator.get_state())
        student = self.student.batch(rows, train=True, generator=generator)
        return replace(student, teacher_views=self.teacher.batch(rows, train=True, generator=twin).views)

    def close(self) -> None:
        for source in {id(s): s for s in (self.student, self.teacher, self.evaluation)}.values():
            source.close()
