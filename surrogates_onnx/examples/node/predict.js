// Predict with an HW-GPT-Bench surrogate from Node.js:
//   node predict.js MODEL.onnx FEATURES.json [MANIFEST.json]
// FEATURES.json holds encoded architectures: a JSON array of rows, each a list of numbers in the model's feature
// order (manifest.json "feature_names"; Python: hwgpt_bench.surrogates_onnx.runtime.encode_archs). Prints one JSON
// object: y_pred [N] (point), y_lower and y_upper [N][n_levels] (interval bounds per level), in the model's unit.
// Before loading, the model file's sha256 must equal the "sha256" of the MANIFEST.json entry of the same file name
// (default manifest: manifest.json in the folder above the model's models/ folder, where the package ships it), as
// the Python runtime checks it; any difference is an error naming the file and both hashes.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const ort = require("onnxruntime-node");

// An error with a message meant for the user: printed alone, without a stack trace.
class CheckError extends Error {}

function sha256(file) {
  return crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

// The manifest entry of modelPath; throws CheckError when the manifest or the entry is missing or the hash differs.
function checkModel(modelPath, manifestPath) {
  if (!fs.existsSync(modelPath) || !fs.statSync(modelPath).isFile()) {
    throw new CheckError(`${modelPath}: model file missing`);
  }
  if (!fs.existsSync(manifestPath)) {
    throw new CheckError(`${manifestPath}: no surrogate manifest, so the sha256 of ${modelPath} cannot be checked; `
      + "pass the manifest's path as the third argument");
  }
  const manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8"));
  const name = path.basename(modelPath); // file names are unique: space__device__metric__workload.onnx
  const entry = (manifest.models || []).find((m) => path.basename(m.file) === name);
  if (entry === undefined) {
    throw new CheckError(`${modelPath}: not listed in ${manifestPath}, so its sha256 cannot be checked`);
  }
  const actual = sha256(modelPath);
  if (actual !== entry.sha256) {
    throw new CheckError(`${modelPath}: sha256 mismatch (manifest ${entry.sha256}, file ${actual}); the file was `
      + "changed or corrupted: reinstall the package or retrain with `hwgpt-bench train-surrogates`");
  }
  return entry;
}

function toRows(tensor, nCols) {
  const rows = [];
  for (let i = 0; i < tensor.data.length; i += nCols) rows.push(Array.from(tensor.data.slice(i, i + nCols)));
  return rows;
}

async function main(modelPath, featuresPath, manifestPath) {
  checkModel(modelPath, manifestPath || path.join(path.dirname(path.dirname(modelPath)), "manifest.json"));
  const rows = JSON.parse(fs.readFileSync(featuresPath, "utf8"));
  const nFeatures = rows[0].length;
  const x = new ort.Tensor("float32", Float32Array.from(rows.flat()), [rows.length, nFeatures]);
  const session = await ort.InferenceSession.create(modelPath, {
    executionProviders: ["cpu"], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: "all",
  });
  const out = await session.run({ X: x });
  const nLevels = out.y_lower.dims[1];
  console.log(JSON.stringify({
    y_pred: Array.from(out.y_pred.data),
    y_lower: toRows(out.y_lower, nLevels),
    y_upper: toRows(out.y_upper, nLevels),
  }));
}

if (process.argv.length !== 4 && process.argv.length !== 5) {
  console.error("usage: node predict.js MODEL.onnx FEATURES.json [MANIFEST.json]");
  process.exit(2);
}
main(process.argv[2], process.argv[3], process.argv[4]).catch((err) => {
  console.error(err instanceof CheckError ? `predict.js: error: ${err.message}` : err);
  process.exit(1);
});
