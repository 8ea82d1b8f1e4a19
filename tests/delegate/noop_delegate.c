/* A minimal TensorFlow Lite external delegate that claims no nodes.
 *
 * Built by tests/test_delegates.py with the system C compiler (`cc -shared -fPIC`) and loaded through
 * `autlearn.runtime.interpreter.make_interpreter(..., "external:<lib>?log=<file>")`.  It proves that the library
 * was really loaded, given its options, and applied to the graph, while the interpreter still runs
 * every node itself (so outputs must equal the plain CPU/XNNPACK outputs).
 *
 * No TensorFlow headers: the struct below mirrors TfLiteDelegate from tensorflow/lite/core/c/common.h
 * ("semi-ABI stable": fields are only ever appended).  Pointers to TfLiteContext and friends are
 * opaque here, since this delegate never looks inside them.
 *
 * Options (all optional):
 *   log=<path>     append one line per event ("create k=v ...", "prepare", "destroy") to <path>
 *   flags=<int>    TfLiteDelegate.flags (default 1 = kTfLiteDelegateFlagsAllowDynamicTensors)
 *   fail=create    tflite_plugin_create_delegate reports an error and returns NULL
 *   fail=prepare   Prepare returns kTfLiteError (the delegate "cannot take the model")
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef int TfLiteBufferHandle;
typedef struct TfLiteContext TfLiteContext;
typedef struct TfLiteTensor TfLiteTensor;
typedef struct TfLiteOpaqueDelegateBuilder TfLiteOpaqueDelegateBuilder;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                       TfLiteBufferHandle buffer_handle, TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                     TfLiteBufferHandle buffer_handle, TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                           TfLiteBufferHandle* handle);
  int64_t flags;
  TfLiteOpaqueDelegateBuilder* opaque_delegate_builder;
} TfLiteDelegate;

typedef struct {
  char log_path[4096];
  int fail_prepare;
} NoopState;

/* Counters the test can read with ctypes as a second witness. */
int noop_delegate_created = 0;
int noop_delegate_prepared = 0;
int noop_delegate_destroyed = 0;

static void note(const NoopState* state, const char* line) {
  if (state == NULL || state->log_path[0] == '\0') return;
  FILE* f = fopen(state->log_path, "a");
  if (f == NULL) return;
  fputs(line, f);
  fputc('\n', f);
  fclose(f);
}

static TfLiteStatus noop_prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  (void)context;
  NoopState* state = (NoopState*)delegate->data_;
  noop_delegate_prepared++;
  note(state, state->fail_prepare ? "prepare fail" : "prepare");
  /* Claim nothing: never call context->ReplaceNodeSubsetsWithDelegateKernels. */
  return state->fail_prepare ? kTfLiteError : kTfLiteOk;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  NoopState* state = (NoopState*)calloc(1, sizeof(NoopState));
  TfLiteDelegate* delegate = (TfLiteDelegate*)calloc(1, sizeof(TfLiteDelegate));
  if (state == NULL || delegate == NULL) {
    free(state);
    free(delegate);
    if (report_error) report_error("noop delegate: out of memory");
    return NULL;
  }
  int64_t flags = 1; /* kTfLiteDelegateFlagsAllowDynamicTensors */
  int fail_create = 0;
  char line[8192] = "create";
  for (size_t i = 0; i < n; i++) {
    const char* k = keys[i] ? keys[i] : "";
    const char* v = values[i] ? values[i] : "";
    if (strcmp(k, "log") == 0) {
      strncpy(state->log_path, v, sizeof(state->log_path) - 1);
    } else if (strcmp(k, "flags") == 0) {
      flags = strtoll(v, NULL, 10);
    } else if (strcmp(k, "fail") == 0) {
      fail_create = strcmp(v, "create") == 0;
      state->fail_prepare = strcmp(v, "prepare") == 0;
    }
    size_t used = strlen(line);
    snprintf(line + used, sizeof(line) - used, " %s=%s", k, v);
  }
  if (fail_create) {
    note(state, "create fail");
    free(state);
    free(delegate);
    if (report_error) report_error("noop delegate: asked to fail (fail=create)");
    return NULL;
  }
  note(state, line);
  delegate->data_ = state;
  delegate->Prepare = noop_prepare;
  delegate->flags = flags;
  noop_delegate_created++;
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate == NULL) return;
  NoopState* state = (NoopState*)delegate->data_;
  note(state, "destroy");
  noop_delegate_destroyed++;
  free(state);
  free(delegate);
}
