// Predict with an HW-GPT-Bench surrogate from Node.js:
//   node predict.js MODEL.onnx FEATURES.json
// FEATURES.json holds encoded architectures: a JSON array of rows, each a list of numbers in the model's feature
// order (manifest.json "feature_names"; Python: hwgpt_bench.surrogates_onnx.runtime.encode_archs). Prints one JSON
// object: y_pred [N] (point), y_lower and y_upper [N][n_levels] (interval bounds per level), in the model's unit.
"use strict";
const fs = require("fs");
const ort = require("onnxruntime-node");

function toRows(tensor, nCols) {
  const rows = [];
  for (let i = 0; i < tensor.data.length; i += nCols) rows.push(Array.from(tensor.data.slice(i, i + nCols)));
  return rows;
}

async function main(modelPath, featuresPath) {
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

if (process.argv.length !== 4) {
  console.error("usage: node predict.js MODEL.onnx FEATURES.json");
  process.exit(2);
}
main(process.argv[2], process.argv[3]).catch((err) => { console.error(err); process.exit(1); });
