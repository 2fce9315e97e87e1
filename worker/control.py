"""A remote-control command, answered by each worker's main process even while its pool is busy.

``echocam produce`` broadcasts ``echocam_model`` to learn the workers' model identity: the run
fingerprint needs the model's sha256, and the producer never loads torch.
"""

from __future__ import annotations

from celery.worker.control import inspect_command

from worker import state


@inspect_command()
def echocam_model(panel) -> dict:
    """The model this worker explains with, and the queues it consumes."""
    queues = [q.name for q in panel.consumer.task_consumer.queues]
    if state.model is None:
        return {"model": None, "queues": queues}
    return {
        "model": state.model.identity,
        "class_names": list(state.model.class_names),
        "params": state.model.params,  # a trained checkpoint's analysis parameters, or None
        "queues": queues,
    }
