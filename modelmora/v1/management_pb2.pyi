import datetime

from modelmora.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model_id", "state", "memory_usage_mb", "device", "loaded_at", "last_used_at", "health_status")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_MB_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATUS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    state: _common_pb2.ModelState
    memory_usage_mb: float
    device: str
    loaded_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    health_status: HealthStatus
    def __init__(self, model_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ModelState, str]] = ..., memory_usage_mb: _Optional[float] = ..., device: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., health_status: _Optional[_Union[HealthStatus, _Mapping]] = ...) -> None: ...

class HealthStatus(_message.Message):
    __slots__ = ("healthy", "last_check_at", "error_message")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    last_check_at: _timestamp_pb2.Timestamp
    error_message: str
    def __init__(self, healthy: _Optional[bool] = ..., last_check_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_message: _Optional[str] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("model_id", "unloaded")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    unloaded: bool
    def __init__(self, model_id: _Optional[str] = ..., unloaded: _Optional[bool] = ...) -> None: ...

class GetSystemStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SystemStatus(_message.Message):
    __slots__ = ("version", "uptime_seconds", "memory", "gpu", "loaded_models", "queue")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    version: str
    uptime_seconds: int
    memory: MemoryStatus
    gpu: GPUStatus
    loaded_models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    queue: QueueStatus
    def __init__(self, version: _Optional[str] = ..., uptime_seconds: _Optional[int] = ..., memory: _Optional[_Union[MemoryStatus, _Mapping]] = ..., gpu: _Optional[_Union[GPUStatus, _Mapping]] = ..., loaded_models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., queue: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class MemoryStatus(_message.Message):
    __slots__ = ("total_mb", "used_mb", "available_mb", "threshold_mb")
    TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    USED_MB_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MB_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_MB_FIELD_NUMBER: _ClassVar[int]
    total_mb: float
    used_mb: float
    available_mb: float
    threshold_mb: float
    def __init__(self, total_mb: _Optional[float] = ..., used_mb: _Optional[float] = ..., available_mb: _Optional[float] = ..., threshold_mb: _Optional[float] = ...) -> None: ...

class GPUStatus(_message.Message):
    __slots__ = ("available", "devices")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    available: bool
    devices: _containers.RepeatedCompositeFieldContainer[GPUDevice]
    def __init__(self, available: _Optional[bool] = ..., devices: _Optional[_Iterable[_Union[GPUDevice, _Mapping]]] = ...) -> None: ...

class GPUDevice(_message.Message):
    __slots__ = ("device_id", "name", "memory_total_mb", "memory_used_mb")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    device_id: int
    name: str
    memory_total_mb: float
    memory_used_mb: float
    def __init__(self, device_id: _Optional[int] = ..., name: _Optional[str] = ..., memory_total_mb: _Optional[float] = ..., memory_used_mb: _Optional[float] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("high_priority", "medium_priority", "low_priority")
    HIGH_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MEDIUM_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LOW_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    high_priority: int
    medium_priority: int
    low_priority: int
    def __init__(self, high_priority: _Optional[int] = ..., medium_priority: _Optional[int] = ..., low_priority: _Optional[int] = ...) -> None: ...

class GetModelHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelHealthResponse(_message.Message):
    __slots__ = ("healthy_count", "unhealthy_count", "models")
    HEALTHY_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    healthy_count: int
    unhealthy_count: int
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, healthy_count: _Optional[int] = ..., unhealthy_count: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class LivenessRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LivenessResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class ReadinessRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadinessResponse(_message.Message):
    __slots__ = ("status", "checks")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    status: str
    checks: HealthChecks
    def __init__(self, status: _Optional[str] = ..., checks: _Optional[_Union[HealthChecks, _Mapping]] = ...) -> None: ...

class HealthChecks(_message.Message):
    __slots__ = ("database", "queue")
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    database: bool
    queue: bool
    def __init__(self, database: _Optional[bool] = ..., queue: _Optional[bool] = ...) -> None: ...
