"""The PredictionService methods, transport-free: request proto in, response proto out.

Validation order and error texts follow TF Serving (predict_util.cc, saved_model/util.cc,
classifier.cc, regressor.cc, multi_inference.cc, get_model_metadata_impl.cc) so that clients
see the same status codes and messages from kfx serve and from tensorflow_model_server. The
gRPC servicers and the REST handler both call these functions.
"""

import numpy as np
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, inference_pb2,
                                     predict_pb2, regression_pb2)

from kfx.serving import errors, tensors
from kfx.serving.servable import DEFAULT_SIGNATURE, Servable, as_object_array

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def _keys(mapping) -> str:
    return ",".join(sorted(mapping))


def _fill_model_spec(spec, servable: Servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name or DEFAULT_SIGNATURE


def check_inputs(signature, feeds: dict) -> None:
    """Checks dtypes against the SignatureDef before anything is queued or run.

    The message is the one TensorFlow's Session::Run gives TF Serving ("Expects arg[i] to be
    float but int64 is provided", i counted in sorted alias order); checking here keeps one bad
    request from failing a whole batch. Shapes are not checked, as in TF Serving: the graph
    decides, so a `[3]` tensor fed to a `[-1,1]` input that the graph broadcasts succeeds.
    """
    for index, alias in enumerate(sorted(signature.inputs)):
        info, array = signature.inputs[alias], feeds[alias]
        given = tensors.dtype_or_none(array)
        if given != info.dtype:
            raise errors.invalid_argument(
                f"Expects arg[{index}] to be {tensors.type_name(info.dtype)} but "
                f"{tensors.type_name(given) if given is not None else array.dtype} is provided")


def prepare_predict(servable: Servable, request: predict_pb2.PredictRequest, method_check: bool = False):
    """Checks and decodes a PredictRequest (RunPredict up to the Session::Run).

    Returns:
        (signature name, SignatureDef, feeds: alias -> numpy array, output aliases to fetch).
    """
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature(signature_name)
    if signature is None:
        raise errors.failed_precondition(f'Serving signature key "{signature_name}" not found.')
    if method_check and signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise errors.internal(
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
            f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
    sent, wanted = request.inputs, signature.inputs
    if len(sent) != len(wanted):
        raise errors.invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{_keys(sent)}}}) "
            f"!= len({{{_keys(wanted)}}}). Sent extra: {{{_keys(set(sent) - set(wanted))}}}. "
            f"Missing but required: {{{_keys(set(wanted) - set(sent))}}}.")
    feeds = {}
    for alias in sorted(wanted):
        if alias not in sent:
            raise errors.invalid_argument(
                f"Signature input alias: {alias}(feed name: {wanted[alias].name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request {{{_keys(sent)}}}, "
                f"or default input alias set: ")
        feeds[alias] = tensors.to_numpy(sent[alias], alias)
    outputs = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise errors.invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                f"set {{{_keys(signature.outputs)}}}.")
        if alias in outputs:
            raise errors.invalid_argument(f"duplicate output tensor alias: {alias}")
        outputs.append(alias)
    check_inputs(signature, feeds)
    return signature_name, signature, feeds, tuple(outputs or sorted(signature.outputs))


def predict_response(servable: Servable, signature_name: str, signature, results: dict) -> predict_pb2.PredictResponse:
    """Encodes a signature's outputs as TF Serving's PredictResponse."""
    response = predict_pb2.PredictResponse()
    _fill_model_spec(response.model_spec, servable, signature_name)
    for alias, array in results.items():
        response.outputs[alias].CopyFrom(tensors.to_proto(array, signature.outputs[alias].dtype))
    return response


def predict(servable: Servable, request: predict_pb2.PredictRequest, deadline=None,
            method_check: bool = False) -> predict_pb2.PredictResponse:
    """Runs a PredictRequest on a servable (TF Serving's RunPredict), blocking this thread."""
    signature_name, signature, feeds, outputs = prepare_predict(servable, request, method_check)
    results = servable.run(signature_name, feeds, outputs, deadline)
    return predict_response(servable, signature_name, signature, results)


def serialized_examples(inputs) -> np.ndarray:
    """tensorflow.serving.Input -> 1-D object array of serialized tf.Example (util.cc).

    With example_list_with_context the context is prepended to every example, which proto
    merging turns into the union of features (what TF Serving does).
    """
    kind = inputs.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in inputs.example_list.examples]
    elif kind == "example_list_with_context":
        context = inputs.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in inputs.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise errors.invalid_argument("Input is empty.")
    return as_object_array(examples)


def _signature_for(servable: Servable, name: str, method: str, method_check: bool, kind: str):
    signature = servable.signature(name)
    if signature is None:
        raise errors.invalid_argument(f"No signature was found with the name: {name or DEFAULT_SIGNATURE}")
    if method_check and signature.method_name != method:
        raise errors.invalid_argument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
    return signature


def _run_examples(servable, signature_name, signature, examples, outputs, deadline):
    feeds = {"inputs": examples}
    check_inputs(signature, feeds)
    return servable.run(signature_name or DEFAULT_SIGNATURE, feeds, tuple(outputs), deadline)


def classify_result(servable: Servable, signature_name: str, inputs, deadline=None,
                    method_check: bool = False) -> classification_pb2.ClassificationResult:
    """Runs a classification signature on tf.Examples (classifier.cc)."""
    signature = _signature_for(servable, signature_name, CLASSIFY_METHOD, method_check, "classification")
    if len(signature.inputs) != 1:
        raise errors.invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise errors.invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise errors.failed_precondition(f"No classification inputs found in SignatureDef: {signature}")
    wanted = [key for key in ("classes", "scores") if key in signature.outputs]
    if not wanted:
        raise errors.failed_precondition(
            'Expected classification signature outputs to contain at least one of "classes" or '
            f'"scores". Signature was: {signature}')
    examples = serialized_examples(inputs)
    out = _run_examples(servable, signature_name, signature, examples, wanted, deadline)
    count = len(examples)
    classes, scores = out.get("classes"), out.get("scores")
    for name, tensor, dtype in (("classes", classes, np.object_), ("scores", scores, np.float32)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise errors.invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got {tensors.shape_string(tensor.shape)}")
        if tensor.dtype != dtype:
            raise errors.invalid_argument(
                f"Expected {name} Tensor of {'DT_STRING' if name == 'classes' else 'DT_FLOAT'}. "
                f"Got: {tensor.dtype}")
        if tensor.shape[0] != count:
            raise errors.invalid_argument(
                f"Expected {name} output batch size of {count}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise errors.invalid_argument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for row in range(count):
        entry = result.classifications.add()
        for col in range(width):
            cls = entry.classes.add()
            if classes is not None:
                cls.label = classes[row, col].decode("utf-8", "replace")
            if scores is not None:
                cls.score = float(scores[row, col])
    return result


def regress_result(servable: Servable, signature_name: str, inputs, deadline=None,
                   method_check: bool = False) -> regression_pb2.RegressionResult:
    """Runs a regression signature on tf.Examples (regressor.cc)."""
    signature = _signature_for(servable, signature_name, REGRESS_METHOD, method_check, "regression")
    if len(signature.inputs) != 1:
        raise errors.invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise errors.invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise errors.failed_precondition(f"No regression inputs found in SignatureDef: {signature}")
    if "outputs" not in signature.outputs:
        raise errors.failed_precondition(f"No regression outputs found in SignatureDef: {signature}")
    examples = serialized_examples(inputs)
    values = _run_examples(servable, signature_name, signature, examples, ["outputs"], deadline)["outputs"]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise errors.invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{tensors.shape_string(values.shape)}")
    if values.dtype != np.float32:
        raise errors.invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    if values.shape[0] != len(examples):
        raise errors.invalid_argument(
            f"Input batch size did not match output batch size: {len(examples)} vs. {values.shape[0]}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))
    return result


def classify(servable, request, deadline=None, method_check=False):
    """ClassificationRequest -> ClassificationResponse."""
    response = classification_pb2.ClassificationResponse()
    response.result.CopyFrom(classify_result(
        servable, request.model_spec.signature_name, request.input, deadline, method_check))
    _fill_model_spec(response.model_spec, servable, request.model_spec.signature_name)
    return response


def regress(servable, request, deadline=None, method_check=False):
    """RegressionRequest -> RegressionResponse."""
    response = regression_pb2.RegressionResponse()
    response.result.CopyFrom(regress_result(
        servable, request.model_spec.signature_name, request.input, deadline, method_check))
    _fill_model_spec(response.model_spec, servable, request.model_spec.signature_name)
    return response


def check_multi_inference(request: inference_pb2.MultiInferenceRequest) -> None:
    """Request-level checks of multi_inference.cc done before a servable is looked up."""
    if not request.tasks:
        raise errors.invalid_argument("Found no tasks in MultiInferenceRequest.")
    name = request.tasks[0].model_spec.name
    seen = set()
    for task in request.tasks:
        if task.model_spec.name != name:
            raise errors.invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in seen:
            raise errors.invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise errors.unimplemented(f"Unsupported signature method_name: {task.method_name}")


def multi_inference(servable, request, deadline=None, method_check=False):
    """MultiInferenceRequest -> MultiInferenceResponse: each task on the same examples."""
    check_multi_inference(request)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(classify_result(
                servable, task.model_spec.signature_name, request.input, deadline, method_check))
        else:
            result.regression_result.CopyFrom(regress_result(
                servable, task.model_spec.signature_name, request.input, deadline, method_check))
        _fill_model_spec(result.model_spec, servable, task.model_spec.signature_name)
    return response


def check_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """ValidateGetModelMetadataRequest."""
    if not request.metadata_field:
        raise errors.invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise errors.invalid_argument(f"Metadata field {field} is not supported")


def metadata(servable: Servable, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadataResponse with the version's SignatureDefMap packed in an Any."""
    check_metadata_request(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in servable.signatures.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def run_warmup(servable: Servable, logs, iterations: int = 1, method_check: bool = False) -> None:
    """Replays warmup PredictionLogs against a servable before it is AVAILABLE.

    Raises:
        ServingError: the first request that fails, as TF Serving fails the load.
    """
    for log in logs:
        kind = log.WhichOneof("log_type")
        for _ in range(max(iterations, 1)):
            if kind == "predict_log":
                predict(servable, log.predict_log.request, method_check=method_check)
            elif kind == "classify_log":
                classify(servable, log.classify_log.request, method_check=method_check)
            elif kind == "regress_log":
                regress(servable, log.regress_log.request, method_check=method_check)
            elif kind == "multi_inference_log":
                multi_inference(servable, log.multi_inference_log.request, method_check=method_check)
            else:
                raise errors.unimplemented(f"Unsupported log_type for warmup: {kind}")

