// Environment differences between any two runs: recomputed when a selection changes.
// The fingerprints are embedded in the page (#env-data); nothing is fetched.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("env-data").textContent);
  var selectA = document.getElementById("env-a");
  var selectB = document.getElementById("env-b");
  var body = document.querySelector("#env-diff tbody");
  var summary = document.getElementById("env-diff-summary");

  function show(value) {
    if (value === null || value === undefined) {
      return "—";
    }
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function update() {
    var envA = data.environments[data.runs[selectA.value]] || {};
    var envB = data.environments[data.runs[selectB.value]] || {};
    var keys = Object.keys(envA).concat(Object.keys(envB).filter(function (k) {
      return !(k in envA);
    })).sort();
    var differing = keys.filter(function (k) { return show(envA[k]) !== show(envB[k]); });
    body.textContent = "";
    differing.forEach(function (k) {
      var row = document.createElement("tr");
      cell(row, k);
      cell(row, show(envA[k]));
      cell(row, show(envB[k]));
      body.appendChild(row);
    });
    summary.textContent = differing.length + " of " + keys.length +
      " fingerprint keys differ between " + selectA.value + " and " + selectB.value + ".";
  }

  selectA.addEventListener("change", update);
  selectB.addEventListener("change", update);
  update();
})();
