from google.protobuf import struct_pb2 as _struct_pb2
from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Distance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTANCE_UNSPECIFIED: _ClassVar[Distance]
    DISTANCE_COSINE: _ClassVar[Distance]
    DISTANCE_DOT: _ClassVar[Distance]
    DISTANCE_EUCLID: _ClassVar[Distance]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
DISTANCE_UNSPECIFIED: Distance
DISTANCE_COSINE: Distance
DISTANCE_DOT: Distance
DISTANCE_EUCLID: Distance
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_KEYWORD: SearchMode
SEARCH_MODE_HYBRID: SearchMode

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model_id", "texts")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model_id", "dimension", "max_tokens", "truncated")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model_id: str
    dimension: int
    max_tokens: int
    truncated: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model_id: _Optional[str] = ..., dimension: _Optional[int] = ..., max_tokens: _Optional[int] = ..., truncated: _Optional[_Iterable[int]] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "embedding_model_id", "dimension", "distance", "vector_store", "points_count", "indexed_points_count", "index_building", "error", "keyword_language")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_STORE_FIELD_NUMBER: _ClassVar[int]
    POINTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEXED_POINTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_BUILDING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    embedding_model_id: str
    dimension: int
    distance: Distance
    vector_store: str
    points_count: int
    indexed_points_count: int
    index_building: bool
    error: str
    keyword_language: str
    def __init__(self, name: _Optional[str] = ..., embedding_model_id: _Optional[str] = ..., dimension: _Optional[int] = ..., distance: _Optional[_Union[Distance, str]] = ..., vector_store: _Optional[str] = ..., points_count: _Optional[int] = ..., indexed_points_count: _Optional[int] = ..., index_building: _Optional[bool] = ..., error: _Optional[str] = ..., keyword_language: _Optional[str] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "embedding_model_id", "distance", "vector_store")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_STORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    embedding_model_id: str
    distance: Distance
    vector_store: str
    def __init__(self, name: _Optional[str] = ..., embedding_model_id: _Optional[str] = ..., distance: _Optional[_Union[Distance, str]] = ..., vector_store: _Optional[str] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChunkingOptions(_message.Message):
    __slots__ = ("chunk_size", "chunk_overlap")
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    chunk_size: int
    chunk_overlap: int
    def __init__(self, chunk_size: _Optional[int] = ..., chunk_overlap: _Optional[int] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "source", "title")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _struct_pb2.Struct
    source: str
    title: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., source: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class IndexDocumentsRequest(_message.Message):
    __slots__ = ("collection", "documents", "chunking")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    chunking: ChunkingOptions
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., chunking: _Optional[_Union[ChunkingOptions, _Mapping]] = ...) -> None: ...

class IndexDocumentsResponse(_message.Message):
    __slots__ = ("document_ids", "chunks_indexed", "documents_indexed", "documents_unchanged", "documents_replaced", "elapsed_ms")
    DOCUMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_REPLACED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    document_ids: _containers.RepeatedScalarFieldContainer[str]
    chunks_indexed: int
    documents_indexed: int
    documents_unchanged: int
    documents_replaced: int
    elapsed_ms: float
    def __init__(self, document_ids: _Optional[_Iterable[str]] = ..., chunks_indexed: _Optional[int] = ..., documents_indexed: _Optional[int] = ..., documents_unchanged: _Optional[int] = ..., documents_replaced: _Optional[int] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class IndexFileRequest(_message.Message):
    __slots__ = ("collection", "path", "content", "filename", "mime_type", "metadata", "chunking", "document_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    path: str
    content: bytes
    filename: str
    mime_type: str
    metadata: _struct_pb2.Struct
    chunking: ChunkingOptions
    document_id: str
    def __init__(self, collection: _Optional[str] = ..., path: _Optional[str] = ..., content: _Optional[bytes] = ..., filename: _Optional[str] = ..., mime_type: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., chunking: _Optional[_Union[ChunkingOptions, _Mapping]] = ..., document_id: _Optional[str] = ...) -> None: ...

class IndexFileResponse(_message.Message):
    __slots__ = ("document_id", "chunks_indexed", "parser", "unchanged", "replaced")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    PARSER_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    chunks_indexed: int
    parser: str
    unchanged: bool
    replaced: bool
    def __init__(self, document_id: _Optional[str] = ..., chunks_indexed: _Optional[int] = ..., parser: _Optional[str] = ..., unchanged: _Optional[bool] = ..., replaced: _Optional[bool] = ...) -> None: ...

class IndexFileStreamRequest(_message.Message):
    __slots__ = ("file",)
    FILE_FIELD_NUMBER: _ClassVar[int]
    file: IndexFileRequest
    def __init__(self, file: _Optional[_Union[IndexFileRequest, _Mapping]] = ...) -> None: ...

class IndexFileStreamResponse(_message.Message):
    __slots__ = ("progress", "done")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    progress: IndexProgress
    done: IndexFileResponse
    def __init__(self, progress: _Optional[_Union[IndexProgress, _Mapping]] = ..., done: _Optional[_Union[IndexFileResponse, _Mapping]] = ...) -> None: ...

class IndexProgress(_message.Message):
    __slots__ = ("chunks_done", "chunks_total")
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    chunks_done: int
    chunks_total: int
    def __init__(self, chunks_done: _Optional[int] = ..., chunks_total: _Optional[int] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("must", "must_not", "should")
    MUST_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[Condition]
    must_not: _containers.RepeatedCompositeFieldContainer[Condition]
    should: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, must: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("key", "value", "any", "range")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: MatchValue
    any: MatchAny
    range: Range
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MatchValue, _Mapping]] = ..., any: _Optional[_Union[MatchAny, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class MatchValue(_message.Message):
    __slots__ = ("text", "integer", "boolean")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    text: str
    integer: int
    boolean: bool
    def __init__(self, text: _Optional[str] = ..., integer: _Optional[int] = ..., boolean: _Optional[bool] = ...) -> None: ...

class MatchAny(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("document_id", "chunk_id", "text", "score", "metadata", "source", "page", "heading_path", "chunk_index", "title")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: _struct_pb2.Struct
    source: str
    page: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    chunk_index: int
    title: str
    def __init__(self, document_id: _Optional[str] = ..., chunk_id: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., source: _Optional[str] = ..., page: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., chunk_index: _Optional[int] = ..., title: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "filter", "score_threshold", "mode")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    top_k: int
    filter: Filter
    score_threshold: float
    mode: SearchMode
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., score_threshold: _Optional[float] = ..., mode: _Optional[_Union[SearchMode, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "search_ms", "embed_ms", "mode", "rerank_ms")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RERANK_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    search_ms: float
    embed_ms: float
    mode: SearchMode
    rerank_ms: float
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., search_ms: _Optional[float] = ..., embed_ms: _Optional[float] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., rerank_ms: _Optional[float] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("collection", "document_ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., document_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("collection", "question", "top_k", "filter", "model_id", "params", "selection", "score_threshold", "mode")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    question: str
    top_k: int
    filter: Filter
    model_id: str
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    score_threshold: float
    mode: SearchMode
    def __init__(self, collection: _Optional[str] = ..., question: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., model_id: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., score_threshold: _Optional[float] = ..., mode: _Optional[_Union[SearchMode, str]] = ...) -> None: ...

class Citations(_message.Message):
    __slots__ = ("hits", "dropped")
    HITS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    dropped: int
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("citations", "chunk", "done", "queued")
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    citations: Citations
    chunk: _common_pb2.TokenChunk
    done: _common_pb2.GenerationDone
    queued: _common_pb2.QueueStatus
    def __init__(self, citations: _Optional[_Union[Citations, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., done: _Optional[_Union[_common_pb2.GenerationDone, _Mapping]] = ..., queued: _Optional[_Union[_common_pb2.QueueStatus, _Mapping]] = ...) -> None: ...
