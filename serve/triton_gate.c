/* engineforge's gate inside tritonserver (LD_PRELOAD): what Triton 2.51 cannot be told from outside.
 *
 * - Health: gRPC ServerReady / HTTP /v2/health/ready and per-model readiness are ANDed with the supervisor's
 *   verdict (a stub that died, a drain), so they never say READY while a served model cannot answer, and do not
 *   turn NOT READY while a new version loads beside the one still serving.
 * - Drain: once the supervisor sets `draining`, new inference calls get UNAVAILABLE at once; calls already
 *   accepted finish. Accepted calls are counted per epoch, so the supervisor can also wait for every call that
 *   started before a version switch to end before it unloads the old version.
 * - Control key: tritonserver takes it on its command line, which every local user can read
 *   (/proc/PID/cmdline). The supervisor passes a placeholder; here, before main(), the argv entry is replaced
 *   by a heap copy holding the key read from an owner-only file. /proc shows the original placeholder.
 * - Zombies: Triton 2.51 never reaps a python stub that died; the supervisor names them here once the model
 *   that owned them is unloaded, and a small thread reaps them.
 *
 * The state lives in a file the supervisor mmaps too (layout mirrored in serve/gate.py; keep them in step).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define GATE_MAGIC 0x45464754u /* "EFGT" */
#define GATE_LAYOUT 1
#define MAX_MODELS 64
#define NAME_BYTES 192
#define MAX_REAP 32
#define KEY_PLACEHOLDER "@ENGINEFORGE_CONTROL_KEY@"

typedef struct {
  uint32_t magic, layout;
  int32_t server_ready;   /* supervisor: 1 every served model can answer, 0 not */
  int32_t draining;       /* supervisor: 1 refuse new inference with UNAVAILABLE */
  int64_t epoch;          /* supervisor: bumped after a version switch */
  int64_t inflight[2];    /* gate: accepted calls not yet answered, by epoch parity */
  int64_t accepted, refused;
  int32_t reap[MAX_REAP]; /* supervisor: pids of dead stubs to reap (0 = free slot) */
  char not_ready[MAX_MODELS][NAME_BYTES]; /* supervisor: models forced NOT READY ("" = free) */
} gate_state;

typedef struct TRITONSERVER_Server TRITONSERVER_Server;
typedef struct TRITONSERVER_Error TRITONSERVER_Error;
typedef struct TRITONSERVER_InferenceRequest TRITONSERVER_InferenceRequest;
typedef struct TRITONSERVER_InferenceResponse TRITONSERVER_InferenceResponse;
typedef struct TRITONSERVER_ResponseAllocator TRITONSERVER_ResponseAllocator;
typedef struct TRITONSERVER_InferenceTrace TRITONSERVER_InferenceTrace;
typedef void (*response_fn_t)(TRITONSERVER_InferenceResponse*, const uint32_t, void*);
enum { ERROR_UNAVAILABLE = 4, RESPONSE_COMPLETE_FINAL = 1 };

static gate_state* state;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static void* next(const char* name) {
  void* fn = dlsym(RTLD_NEXT, name);
  if (fn == NULL) {
    fprintf(stderr, "engineforge gate: %s not found in libtritonserver\n", name);
    abort();
  }
  return fn;
}

static void map_state(void) {
  const char* path = getenv("ENGINEFORGE_GATE_STATE");
  if (path == NULL) return;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  void* map = mmap(NULL, sizeof(gate_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (map != MAP_FAILED && ((gate_state*)map)->magic == GATE_MAGIC && ((gate_state*)map)->layout == GATE_LAYOUT)
    state = (gate_state*)map;
}

static gate_state* gate(void) {
  pthread_once(&state_once, map_state);
  return state;
}

static bool forced_not_ready(const char* model) {
  gate_state* s = gate();
  if (s == NULL || model == NULL) return false;
  for (int i = 0; i < MAX_MODELS; i++) {
    if (s->not_ready[i][0] != '\0' && strncmp(s->not_ready[i], model, NAME_BYTES) == 0) return true;
  }
  return false;
}

TRITONSERVER_Error* TRITONSERVER_ServerIsReady(TRITONSERVER_Server* server, bool* ready) {
  static TRITONSERVER_Error* (*real)(TRITONSERVER_Server*, bool*);
  if (real == NULL) real = next("TRITONSERVER_ServerIsReady");
  TRITONSERVER_Error* err = real(server, ready);
  gate_state* s = gate();
  if (err == NULL && s != NULL)
    *ready = *ready && __atomic_load_n(&s->server_ready, __ATOMIC_ACQUIRE) && !__atomic_load_n(&s->draining, __ATOMIC_ACQUIRE);
  return err;
}

TRITONSERVER_Error* TRITONSERVER_ServerModelIsReady(TRITONSERVER_Server* server, const char* model,
                                                    const int64_t version, bool* ready) {
  static TRITONSERVER_Error* (*real)(TRITONSERVER_Server*, const char*, const int64_t, bool*);
  if (real == NULL) real = next("TRITONSERVER_ServerModelIsReady");
  TRITONSERVER_Error* err = real(server, model, version, ready);
  gate_state* s = gate();
  if (err == NULL && s != NULL && *ready)
    *ready = !__atomic_load_n(&s->draining, __ATOMIC_ACQUIRE) && !forced_not_ready(model);
  return err;
}

/* The frontends set the response callback, then call InferAsync on the same thread: the wrapper made by the
 * first is found by the second through this thread-local, and freed there if the call is refused. */
typedef struct {
  response_fn_t fn;
  void* userp;
  TRITONSERVER_InferenceRequest* request;
  int slot; /* epoch parity counted in, -1 before acceptance */
} wrapped_callback;
static __thread wrapped_callback* last_wrapped;

static void on_response(TRITONSERVER_InferenceResponse* response, const uint32_t flags, void* userp) {
  wrapped_callback* w = (wrapped_callback*)userp;
  int slot = w->slot;
  bool final = (flags & RESPONSE_COMPLETE_FINAL) != 0;
  w->fn(response, flags, w->userp);
  if (final) {
    if (slot >= 0 && state != NULL) __atomic_sub_fetch(&state->inflight[slot], 1, __ATOMIC_ACQ_REL);
    free(w);
  }
}

TRITONSERVER_Error* TRITONSERVER_InferenceRequestSetResponseCallback(
    TRITONSERVER_InferenceRequest* request, TRITONSERVER_ResponseAllocator* allocator, void* allocator_userp,
    response_fn_t fn, void* userp) {
  static TRITONSERVER_Error* (*real)(TRITONSERVER_InferenceRequest*, TRITONSERVER_ResponseAllocator*, void*,
                                     response_fn_t, void*);
  if (real == NULL) real = next("TRITONSERVER_InferenceRequestSetResponseCallback");
  wrapped_callback* w = gate() == NULL || fn == NULL ? NULL : calloc(1, sizeof(wrapped_callback));
  if (w == NULL) return real(request, allocator, allocator_userp, fn, userp);
  w->fn = fn;
  w->userp = userp;
  w->request = request;
  w->slot = -1;
  TRITONSERVER_Error* err = real(request, allocator, allocator_userp, on_response, w);
  if (err != NULL) {
    free(w);
    return err;
  }
  /* Not freed when replaced: a wrapper whose request went to InferAsync on another thread is still in use (its
   * callback frees it); one whose request was never sent leaks a few bytes, which is rare and harmless. */
  last_wrapped = w;
  return NULL;
}

TRITONSERVER_Error* TRITONSERVER_ErrorNew(int code, const char* message);

TRITONSERVER_Error* TRITONSERVER_ServerInferAsync(TRITONSERVER_Server* server, TRITONSERVER_InferenceRequest* request,
                                                  TRITONSERVER_InferenceTrace* trace) {
  static TRITONSERVER_Error* (*real)(TRITONSERVER_Server*, TRITONSERVER_InferenceRequest*,
                                     TRITONSERVER_InferenceTrace*);
  if (real == NULL) real = next("TRITONSERVER_ServerInferAsync");
  gate_state* s = gate();
  wrapped_callback* w = (last_wrapped != NULL && last_wrapped->request == request) ? last_wrapped : NULL;
  last_wrapped = NULL;
  if (s != NULL && __atomic_load_n(&s->draining, __ATOMIC_ACQUIRE)) {
    free(w);
    __atomic_add_fetch(&s->refused, 1, __ATOMIC_RELAXED);
    return TRITONSERVER_ErrorNew(ERROR_UNAVAILABLE,
                                 "the server is shutting down and takes no new requests; retry on another replica");
  }
  int slot = -1;
  if (w != NULL) { /* count before the call: the response may complete on another thread before it returns */
    slot = (int)(__atomic_load_n(&s->epoch, __ATOMIC_ACQUIRE) & 1);
    w->slot = slot;
    __atomic_add_fetch(&s->inflight[slot], 1, __ATOMIC_ACQ_REL);
  }
  TRITONSERVER_Error* err = real(server, request, trace);
  if (err != NULL && w != NULL) { /* refused by Triton: no callback will come */
    __atomic_sub_fetch(&s->inflight[slot], 1, __ATOMIC_ACQ_REL);
    free(w);
  } else if (err == NULL && s != NULL) {
    __atomic_add_fetch(&s->accepted, 1, __ATOMIC_RELAXED);
  }
  return err;
}

static void* reaper(void* unused) {
  (void)unused;
  for (;;) {
    gate_state* s = gate();
    for (int i = 0; s != NULL && i < MAX_REAP; i++) {
      int pid = __atomic_load_n(&s->reap[i], __ATOMIC_ACQUIRE);
      if (pid > 0 && waitpid(pid, NULL, WNOHANG) != 0) __atomic_store_n(&s->reap[i], 0, __ATOMIC_RELEASE);
    }
    usleep(200 * 1000);
  }
  return NULL;
}

static char* read_key(const char* path) {
  FILE* f = fopen(path, "re");
  if (f == NULL) return NULL;
  char buffer[512];
  size_t n = fread(buffer, 1, sizeof(buffer) - 1, f);
  fclose(f);
  while (n > 0 && (buffer[n - 1] == '\n' || buffer[n - 1] == '\r' || buffer[n - 1] == ' ')) n--;
  buffer[n] = '\0';
  return n > 0 ? strdup(buffer) : NULL;
}

/* glibc passes (argc, argv, envp) to constructors of preloaded objects; main() receives this same argv. */
__attribute__((constructor)) static void gate_init(int argc, char** argv, char** envp) {
  (void)envp;
  const char* key_file = getenv("ENGINEFORGE_GATE_KEY_FILE");
  char* key = key_file != NULL ? read_key(key_file) : NULL;
  for (int i = 0; i < argc; i++) {
    char* at = strstr(argv[i], KEY_PLACEHOLDER);
    if (at == NULL) continue;
    if (key == NULL) { /* fail closed: the placeholder itself must never become the key */
      fprintf(stderr, "engineforge gate: no control key in ENGINEFORGE_GATE_KEY_FILE; refusing to start\n");
      _exit(1);
    }
    size_t head = (size_t)(at - argv[i]), tail = strlen(at + strlen(KEY_PLACEHOLDER));
    char* replaced = malloc(head + strlen(key) + tail + 1);
    if (replaced == NULL) abort();
    memcpy(replaced, argv[i], head);
    strcpy(replaced + head, key);
    strcat(replaced, at + strlen(KEY_PLACEHOLDER));
    argv[i] = replaced;
  }
  /* The python stubs Triton starts must not inherit the gate. */
  unsetenv("LD_PRELOAD");
  unsetenv("ENGINEFORGE_GATE_KEY_FILE");
  if (getenv("ENGINEFORGE_GATE_STATE") != NULL) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, reaper, NULL) == 0) pthread_detach(thread);
  }
}
