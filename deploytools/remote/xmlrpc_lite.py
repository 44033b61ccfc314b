"""A small XML-RPC client for supervisord (stdlib only, cheap to import).

Why not `xmlrpc.client`: it imports `http.client`, which pulls in email.*, ssl,
urllib.parse, decimal and datetime, ~30 ms of CPU on every agent start on every
host, for the handful of calls a deploy makes. supervisord needs little: one POST
per connection over a unix socket or TCP, optional basic auth, and the XML-RPC
types its answers use, parsed with expat (a C parser that is already compiled in).
"""

from __future__ import annotations

import binascii
from typing import Any, Dict, List, Optional, Tuple
from xml.parsers import expat

from deploytools.remote import http_lite
from deploytools.remote.http_lite import ResponseError

_RESPONSE_LIMIT = 64 * 1024 * 1024  # a sane bound: supervisord's answers are kilobytes
# XML 1.0 forbids these characters even as references, yet supervisord sends log tails
# (tailProcessStderrLog) through xmlrpc.client.dumps, which passes them on unescaped:
# one ANSI colour code in a program's stderr would otherwise make the answer unreadable.
_CONTROL_BYTES = bytes(range(32)).translate(None, b"\t\n\r")
_CONTROL_TO_MARK = bytes.maketrans(_CONTROL_BYTES, b"?" * len(_CONTROL_BYTES))


class Fault(Exception):
    """An XML-RPC fault: the server understood the call and refused it (e.g. BAD_NAME).

    Same attributes and text as xmlrpc.client.Fault, so messages built from it read
    as before."""

    def __init__(self, faultCode: int, faultString: str) -> None:  # noqa: N803 - its API
        super().__init__(faultCode, faultString)
        self.faultCode = faultCode
        self.faultString = faultString

    def __str__(self) -> str:
        return "<Fault %s: %r>" % (self.faultCode, self.faultString)


def _escape(text: str) -> str:
    # \r as a reference: a raw one would be read back as \n (XML line-end handling)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


def _encode(value: Any, out: List[str]) -> None:
    """Append one <value> for the types supervisor's methods take."""
    if value is None:
        out.append("<value><nil/></value>")
    elif isinstance(value, bool):  # before int: bool is an int
        out.append("<value><boolean>%d</boolean></value>" % value)
    elif isinstance(value, int):
        tag = "int" if -2 ** 31 <= value < 2 ** 31 else "i8"
        out.append("<value><%s>%d</%s></value>" % (tag, value, tag))
    elif isinstance(value, float):
        out.append("<value><double>%r</double></value>" % value)
    elif isinstance(value, str):
        out.append("<value><string>%s</string></value>" % _escape(value))
    elif isinstance(value, (list, tuple)):
        out.append("<value><array><data>")
        for item in value:
            _encode(item, out)
        out.append("</data></array></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("XML-RPC struct keys must be strings, not %r" % (key,))
            out.append("<member><name>%s</name>" % _escape(key))
            _encode(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    else:
        raise TypeError("cannot encode %s as XML-RPC" % type(value).__name__)


def dumps_call(method: str, params: Tuple[Any, ...]) -> bytes:
    """The body of a methodCall, UTF-8."""
    out = ["<?xml version='1.0'?>\n<methodCall>\n<methodName>%s</methodName>\n<params>\n"
           % _escape(method)]
    for param in params:
        out.append("<param>")
        _encode(param, out)
        out.append("</param>\n")
    out.append("</params>\n</methodCall>\n")
    return "".join(out).encode("utf-8")


def _scalar(tag: str, text: str) -> Any:
    if tag in ("string", "name", "dateTime.iso8601"):
        return text  # dateTime as its text: supervisor sends none, and nobody reads one
    if tag in ("int", "i4", "i8"):
        return int(text.strip())
    if tag == "double":
        return float(text.strip())
    if tag == "boolean":
        if text.strip() not in ("0", "1"):
            raise ValueError("bad boolean value %r" % text)
        return text.strip() == "1"
    if tag == "nil":
        return None
    return binascii.a2b_base64(text.encode("ascii"))  # base64


_SCALARS = ("string", "name", "int", "i4", "i8", "double", "boolean", "nil", "base64",
            "dateTime.iso8601")
_FRAMING = ("methodResponse", "params", "param", "fault", "member", "data")


class _Unmarshaller:
    """expat callbacks building values on a stack, as xmlrpc.client's Unmarshaller does:
    an array or struct marks where its items start and collects them at its end tag."""

    def __init__(self) -> None:
        self.stack: List[Any] = []
        self.marks: List[int] = []
        self.data: List[str] = []
        self.untyped = False  # inside a <value> with no type element (yet): a string
        self.root: Optional[str] = None
        self.fault = False

    def start(self, tag: str, attrs: Dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
        if tag in ("array", "struct"):
            self.marks.append(len(self.stack))
        elif tag == "fault":
            self.fault = True
        elif tag not in _SCALARS and tag not in _FRAMING and tag != "value":
            raise ValueError("unknown tag %r" % tag)
        self.data = []
        self.untyped = tag == "value"

    def chars(self, text: str) -> None:
        self.data.append(text)

    def end(self, tag: str) -> None:
        if tag in _SCALARS:
            self.stack.append(_scalar(tag, "".join(self.data)))
        elif tag == "value":
            if self.untyped:
                self.stack.append("".join(self.data))
        elif tag == "array":
            mark = self.marks.pop()
            self.stack[mark:] = [self.stack[mark:]]
        elif tag == "struct":
            mark = self.marks.pop()
            items = self.stack[mark:]
            if len(items) % 2:
                raise ValueError("struct member without a value")
            self.stack[mark:] = [dict(zip(items[::2], items[1::2]))]
        self.untyped = False


def loads_response(body: bytes) -> Any:
    """The one value of a methodResponse; a <fault> raises Fault; anything that is not a
    well-formed response raises ResponseError."""
    unmarshaller = _Unmarshaller()
    parser = expat.ParserCreate()
    parser.StartElementHandler = unmarshaller.start
    parser.EndElementHandler = unmarshaller.end
    parser.CharacterDataHandler = unmarshaller.chars
    try:
        parser.Parse(body.translate(_CONTROL_TO_MARK), True)
    except (expat.ExpatError, ValueError, TypeError, binascii.Error) as exc:
        raise ResponseError("malformed XML-RPC response: %s" % exc) from None
    stack = unmarshaller.stack
    if unmarshaller.root != "methodResponse" or unmarshaller.marks or len(stack) != 1:
        raise ResponseError("malformed XML-RPC response: not one methodResponse value")
    if unmarshaller.fault:
        fault = stack[0]
        if not isinstance(fault, dict) or "faultCode" not in fault:
            raise ResponseError("malformed XML-RPC fault: %r" % (fault,))
        raise Fault(fault["faultCode"], str(fault.get("faultString", "")))
    return stack[0]


class ServerProxy:
    """Calls methods of one XML-RPC server: one HTTP/1.0 POST per call and connection
    (HTTP/1.0 so that no server answers chunked; supervisord closes after answering)."""

    def __init__(self, url: str, user: Optional[str] = None, password: Optional[str] = None,
                 timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        if url.startswith("unix://"):
            host, path = "localhost", "/RPC2"
        else:
            rest = url.split("://", 1)[-1]
            host, _, path = rest.partition("/")
            path = "/" + path.rstrip("/") + "/RPC2" if path.rstrip("/") else "/RPC2"
        auth = ""
        if user:
            token = binascii.b2a_base64(("%s:%s" % (user, password or "")).encode("utf-8"),
                                        newline=False).decode("ascii")
            auth = "Authorization: Basic %s\r\n" % token
        self._head = ("POST %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: deploytools\r\n"
                      "Content-Type: text/xml\r\nConnection: close\r\n%s" % (path, host, auth))

    def call(self, method: str, *params: Any) -> Any:
        """The method's result; raises Fault, ResponseError, or OSError (incl. timeouts:
        `timeout` bounds the whole call, not each read)."""
        body = dumps_call(method, params)
        request = (self._head + "Content-Length: %d\r\n\r\n" % len(body)).encode("latin-1")
        response = http_lite.exchange(self.url, request + body, self.timeout, _RESPONSE_LIMIT)
        if response.status != 200:
            raise ResponseError("HTTP status %d %s" % (response.status, response.reason))
        if len(response.body) >= _RESPONSE_LIMIT:
            raise ResponseError("response larger than %d bytes" % _RESPONSE_LIMIT)
        return loads_response(response.body)
