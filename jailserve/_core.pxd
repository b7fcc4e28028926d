# The C-level surface of jailserve._core: the parser's spans and state, the connection that
# owns the I/O, and the serve loop.  Declared here, apart from the bodies, so the greenlet hub
# (issue 8) can cimport the parser / environ / writer pieces and subclass Connection with a
# non-blocking recv/send.
from libc.stdint cimport uint64_t
from posix.uio cimport iovec


cdef struct Header:
    # One header field line as spans into RequestParser.buf (RFC 9112 §5: field-name ":" OWS
    # field-value OWS).  hid indexes the known-header table (-1 when unknown).
    Py_ssize_t name_off
    Py_ssize_t name_len
    Py_ssize_t value_off
    Py_ssize_t value_len
    int hid


cdef class RequestParser:
    cdef char *buf              # receive buffer, owned; heads are parsed in place
    cdef char *scratch          # as large as buf: PATH_INFO decoding, HTTP_* key building
    cdef Py_ssize_t cap         # allocated size of buf
    cdef Py_ssize_t limit       # buffer-size: the largest request head accepted
    cdef Py_ssize_t start       # first unconsumed byte
    cdef Py_ssize_t end         # one past the last received byte
    cdef Py_ssize_t scanned     # how far the end-of-head search got (no O(n^2) on drips)
    cdef int proto              # PROTO_HTTP or PROTO_UWSGI
    cdef int state              # ST_HEAD, ST_BODY, ST_CLOSED, ST_ERROR
    cdef int err                # error code once state == ST_ERROR
    cdef object error           # the HTTPError raised, re-raised on every later feed

    # request line (spans)
    cdef Py_ssize_t head_start, head_len
    cdef Py_ssize_t method_off, method_len, target_off, target_len
    cdef Py_ssize_t path_off, path_len, query_off, query_len
    cdef int major, minor, modifier1

    cdef Header *headers
    cdef int nheaders
    cdef int max_headers

    # framing decided from the head (RFC 9112 §6.3)
    cdef bint keep_alive, expect_continue, chunked
    cdef long long remaining    # bytes left in the current Content-Length body or chunk
    cdef int cstate             # chunked decoder state
    cdef long long csize
    cdef int cdigits
    cdef Py_ssize_t trailer_bytes
    cdef Py_ssize_t vars_bytes  # uwsgi-style size of the CGI vars (request log)
    cdef object base_environ    # feed(): build environ dicts from this base when not None

    cdef void reset(self)
    cdef int fail(self, int code) except -1
    cdef Py_ssize_t make_room(self) except -1
    cdef void new_message(self)
    cdef int try_head(self) except -1
    cdef int check_method_prefix(self) except -1
    cdef int head_need(self) except -1
    cdef int parse_head(self, Py_ssize_t hend) except -1
    cdef Py_ssize_t parse_request_line(self, Py_ssize_t p, Py_ssize_t hend) except -1
    cdef int split_target(self) except -1
    cdef Py_ssize_t skip_authority(self, Py_ssize_t p, Py_ssize_t e) except -1
    cdef Py_ssize_t parse_fields(self, Py_ssize_t p) except -1
    cdef int check_semantics(self) except -1
    cdef void connection_tokens(self, Header *h, bint *close, bint *keep) noexcept
    cdef int transfer_codings(self) except -1
    cdef int try_uwsgi(self) except -1
    cdef int parse_vars(self, Py_ssize_t p, Py_ssize_t e) except -1
    cdef int body_next(self, Py_ssize_t maxlen, Py_ssize_t *off, Py_ssize_t *ln) except -1
    cdef int take_body(self, Py_ssize_t maxlen, Py_ssize_t *off, Py_ssize_t *ln)
    cdef void body_unread(self, Py_ssize_t n)
    cdef bint body_done(self)
    cdef int skip_buffered_body(self) except -1
    cdef int message_done(self)
    cdef int chunked_next(self, Py_ssize_t maxlen, Py_ssize_t *off, Py_ssize_t *ln) except -1
    cdef int feed_bytes(self, const char *p, Py_ssize_t n, list events) except -1
    cdef int pump(self, list events) except -1
    cdef tuple head_event(self)


cdef class ServeConfig:
    cdef public Py_ssize_t buffer_size
    cdef public double socket_timeout
    cdef public long long max_requests
    cdef public str server_name
    cdef public object log
    cdef public object status_slot
    cdef public int max_vars
    cdef public object errors
    cdef public dict environ
    cdef public unsigned int harakiri_alarm


cdef class Connection:
    cdef Server server
    cdef RequestParser parser
    cdef int fd
    cdef int kind
    cdef dict base
    cdef str remote_addr
    cdef str remote_port
    cdef bint keep_alive        # this connection may carry another request after this one
    cdef bint continue_sent
    cdef bint is_head
    cdef int requests           # requests served on this connection
    cdef int send_waited        # SO_SNDTIMEO slices spent in the current send
    cdef char *wbuf             # response head being built (reused)
    cdef Py_ssize_t wcap, wlen
    cdef Response resp
    cdef char chunk_line[24]

    cdef int wgrow(self, Py_ssize_t need) except -1
    cdef int wput(self, const char *p, Py_ssize_t n) except -1
    cdef Py_ssize_t fill(self, bint idle) except -2
    cdef Py_ssize_t recv_some(self, char *dst, Py_ssize_t room, bint idle) except -2
    cdef bytes read_direct(self, Py_ssize_t want)
    cdef int wait_send_slice(self) except -1
    cdef int send_iov(self, iovec *iov, int n) except -1
    cdef int send_continue(self) except -1
    cdef bytes body_chunk(self, Py_ssize_t maxlen)
    cdef void linger_close(self)
    cdef int serve_fd(self, int fd, int kind, dict base, str addr, str port) except -1
    cdef int read_head(self) except -1
    cdef int one_request(self) except -1
    cdef int request_ready(self) except -1
    cdef int app_step(self) except -1
    cdef bint discard_body(self) except -1
    cdef dict make_environ(self)
    cdef int run_app(self, dict env) except -1
    cdef int consume(self, object result) except -1
    cdef int app_failed(self, dict env) except -1
    cdef int send_error(self, int status, str reason) except -1
    cdef int log_request(self, dict env, uint64_t t0, double wall) except -1


cdef class Response:
    cdef Connection conn
    cdef int status
    cdef bint started, sent, chunked, nobody, has_cl, has_date, app_close
    cdef long long cl
    cdef long long body_sent
    cdef Py_ssize_t total_sent
    cdef Py_ssize_t head_lines   # bytes of wbuf holding status line + app headers
    cdef int nheaders
    cdef Py_ssize_t headers_size

    cdef int encode(self, object status, object headers) except -1
    cdef int add_header(self, const char *p, Py_ssize_t n, const char *v, Py_ssize_t vn) except -1
    cdef int finish_head(self, long long known_len) except -1
    cdef int send_body(self, const char *p, Py_ssize_t n) except -1
    cdef int send_list(self, object seq) except -1
    cdef int send_file(self, object wrapper) except -1
    cdef int finish(self) except -1


cdef class Server:
    cdef list socks
    cdef int nlisten
    cdef int *fds
    cdef int *kinds
    cdef int *saved_flags
    cdef list bases
    cdef object app
    cdef ServeConfig cfg
    cdef Connection conn
    cdef Py_buffer slot_view
    cdef char *slot
    cdef long long served
    cdef int nonvars            # environ entries that are not CGI vars (request log)
    cdef int rr
    cdef bint opts_checked, opts_per_conn
    cdef double slice_s
    cdef int slices

    cdef dict base_environ(self, sock, int kind)
    cdef int setup(self) except -1
    cdef void teardown(self)
    cdef void slot_begin(self, uint64_t t0)
    cdef void slot_end(self)
    cdef int accept_one(self, int *idx, char *addr, int *port) except -2
    cdef long long run(self) except -1
    cdef int conn_options(self, int fd) except -1


cdef class Slot:
    # one accepted connection in the hub, idle or busy (docs/internals.md, "Greenlet hub")
    cdef int fd, idx, kind, state
    cdef str addr, port
    cdef AsyncConnection conn   # None while idle: an idle connection holds no buffers
    cdef int wait_ev            # W_READ / W_WRITE: its core waits for this edge
    cdef bint readable          # a read edge came and no recv has seen EAGAIN since
    cdef bint watched           # registered with the poller (Hub.watch)
    cdef uint64_t deadline      # monotonic ns; 0 = none (socket-timeout)
    cdef object exc             # a parse error the hub found, answered by a core
    cdef int served             # requests begun on it


cdef class AsyncConnection(Connection):
    cdef Hub hub
    cdef Slot slot
    cdef object g               # the core greenlet serving it
    cdef list app_fds           # fds the app registered with wait_fd_read / wait_fd_write
    cdef double app_timeout     # the shortest timeout registered (-1: none)
    cdef bint app_pending, app_waiting
    cdef int ready              # uwsgi.ready_fd()
    cdef long long token        # invalidates the timers of a wait that ended

    cdef int wait_conn(self, int ev) except -1
    cdef int wait_blocking(self, int ev) except -1
    cdef int app_suspend(self) except -1
    cdef void app_reset(self)
    cdef int app_wait_fd(self, int fd, int how, double timeout) except -1


cdef class Hub(Server):
    cdef int pfd
    cdef void *evbuf            # js_ev[JS_MAX_EVENTS] for the poller
    cdef int max_cores, ncores, busy, nconns
    cdef list slots             # fd -> Slot or None
    cdef dict appfds            # fd -> AsyncConnection waiting on it
    cdef list free_cores        # idle core greenlets
    cdef object fifo            # deque of Slots with a complete head, all cores busy
    cdef list pending           # Slots whose next head the hub must read
    cdef list runq              # AsyncConnections that yielded (suspend with no wait)
    cdef list timers            # heap of (due ns, seq, AsyncConnection, token)
    cdef long long seq
    cdef list pool              # AsyncConnections (buffers) not in use
    cdef AsyncConnection cur    # the connection of the core that has the CPU
    cdef object hub_g, hub_switch, greenlet_cls, core_run
    cdef bint accepting
    cdef bint sync              # serve(): the app runs on the hub's stack, no greenlets
    cdef uint64_t paused_until, last_sweep, timeout_ns

    cdef long long run_hub(self) except -1
    cdef int watch(self, Slot s) except -1
    cdef int next_timeout(self) except? -1
    cdef int listen_on(self) except -1
    cdef int listen_off(self) except -1
    cdef int stop_accepting(self) except -1
    cdef void shutdown(self)
    cdef int accept_burst(self, int i) except -1
    cdef AsyncConnection activate(self, Slot s)
    cdef void release(self, Slot s)
    cdef void close_slot(self, Slot s)
    cdef int read_head(self, Slot s) except -1
    cdef int read_pending(self) except -1
    cdef int dispatch(self, Slot s) except -1
    cdef int switch_in(self, g, value) except -1
    cdef int serve_slot(self, Slot s, g) except -1
    cdef int wake(self, Slot s, int why) except -1
    cdef int wake_app(self, AsyncConnection c, int fd) except -1
    cdef int fire_timers(self, uint64_t now) except -1
    cdef int run_yielded(self) except -1
    cdef int sweep(self, uint64_t now) except -1
