/*
 * Sluice accelerator plugin ABI, version 1.
 *
 * A plugin is a shared library that runs models on a device Sluice knows nothing about (an FPGA
 * card, say). Sluice opens the library, checks sluice_plugin_abi_version(), and then, once per
 * model instance (one per worker thread):
 *
 *   sluice_plugin_load(artifact, options)   -> a model handle
 *   sluice_plugin_signature(model)          -> its inputs and outputs, as JSON
 *   sluice_plugin_run(model, inputs)        -> outputs, one batch at a time (the first dimension
 *                                              of every input is the batch)
 *   sluice_plugin_health(model)             -> whether the device still works
 *   sluice_plugin_unload(model)
 *
 * Threads: Sluice calls a model handle from one thread at a time (it may be a different thread
 * from call to call); different handles may run concurrently.
 *
 * Memory: what Sluice passes in stays Sluice's and is valid only during the call. What the plugin
 * returns (error strings, signature JSON, output tensors and everything they point to) stays the
 * plugin's until Sluice hands it back with sluice_plugin_free_string / sluice_plugin_free_outputs.
 *
 * Errors: functions returning int32_t return a sluice_status. On anything but SLUICE_OK they may
 * set *error to a NUL-terminated, plugin-allocated message (or leave it NULL). A plugin must not
 * let a C++ exception or a Rust panic cross this boundary.
 */
#ifndef SLUICE_PLUGIN_H
#define SLUICE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_PLUGIN_ABI_VERSION 1u

typedef enum sluice_status {
    SLUICE_OK = 0,
    /* The request's values cannot be run (wrong shape, out of range): the caller gets 400. */
    SLUICE_INVALID_INPUT = 1,
    /* The plugin or its device failed: the caller gets 500 (from health: the model is not ready). */
    SLUICE_ERROR = 2
} sluice_status;

/* Element types; data is little-endian and row-major; BOOL is one byte, 0 or 1; each BYTES
 * element is a 4-byte little-endian length followed by that many bytes (the Open Inference
 * Protocol's binary encoding), elements back to back. */
typedef enum sluice_dtype {
    SLUICE_BOOL = 0,
    SLUICE_UINT8 = 1,
    SLUICE_UINT16 = 2,
    SLUICE_UINT32 = 3,
    SLUICE_UINT64 = 4,
    SLUICE_INT8 = 5,
    SLUICE_INT16 = 6,
    SLUICE_INT32 = 7,
    SLUICE_INT64 = 8,
    SLUICE_FP16 = 9,
    SLUICE_FP32 = 10,
    SLUICE_FP64 = 11,
    SLUICE_BYTES = 12
} sluice_dtype;

typedef struct sluice_tensor {
    const char *name;     /* NUL-terminated */
    int32_t dtype;        /* a sluice_dtype */
    uint32_t rank;
    const int64_t *shape; /* rank entries */
    const void *data;
    uint64_t byte_len;    /* product(shape) * element size; for BYTES, the encoding's length */
} sluice_tensor;

/* A loaded model; opaque to Sluice. */
typedef struct sluice_model sluice_model;

/* SLUICE_PLUGIN_ABI_VERSION of the header the plugin was built against. */
uint32_t sluice_plugin_abi_version(void);

/* Loads the registered artifact (a file the plugin understands) with the options JSON object from
 * the model's config ("{}" when none). */
int32_t sluice_plugin_load(const char *artifact_path, const char *options_json, sluice_model **model,
                           char **error);

/* The model's inputs and outputs:
 * {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}], "outputs": [...]}
 * with Open Inference Protocol datatype names and -1 for a dynamic dimension. */
int32_t sluice_plugin_signature(const sluice_model *model, char **signature_json, char **error);

/* Runs one batch. Inputs come in signature order. On SLUICE_OK, *outputs holds *n_outputs
 * tensors, every output of the signature in its order. */
int32_t sluice_plugin_run(sluice_model *model, const sluice_tensor *inputs, size_t n_inputs,
                          sluice_tensor **outputs, size_t *n_outputs, char **error);

/* SLUICE_OK while the model and its device can serve. */
int32_t sluice_plugin_health(const sluice_model *model, char **error);

void sluice_plugin_free_outputs(sluice_tensor *outputs, size_t n_outputs);
void sluice_plugin_free_string(char *s);
void sluice_plugin_unload(sluice_model *model);

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_PLUGIN_H */
