// Behaviour of pdauto's pages. No inline scripts: the Content Security Policy forbids them.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // Every htmx request carries the CSRF token in a header.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = csrfToken();
  });

  // htmx 2 does not swap error responses; show them in the target instead of
  // failing silently.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status >= 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("htmx:sendError", function (event) {
    var target = event.detail.target;
    if (target) {
      target.innerHTML = "";
      var box = document.createElement("div");
      box.className = "error-box";
      box.setAttribute("role", "alert");
      box.textContent = "The server could not be reached. Check your connection and try again.";
      target.appendChild(box);
    }
  });

  // The builder: Save is enabled only by a 2xx test of the settings now in the form.
  function builder() {
    return document.getElementById("builder");
  }

  function setSaveEnabled(enabled) {
    var save = document.getElementById("save-button");
    if (save) {
      save.disabled = !enabled;
    }
  }

  function clearTest() {
    var proof = document.getElementById("test_proof");
    if (proof) {
      proof.value = "";
    }
    var result = document.getElementById("test-result");
    if (result) {
      result.innerHTML = "";
    }
    setSaveEnabled(false);
    var hint = document.getElementById("save-hint");
    if (hint) {
      hint.textContent = "The request settings changed: press Test Now again before saving.";
    }
  }

  document.addEventListener("input", function (event) {
    if (event.target.closest && event.target.closest("[data-request-setting]")) {
      clearTest();
    }
  });
  document.addEventListener("change", function (event) {
    if (event.target.closest && event.target.closest("[data-request-setting]")) {
      clearTest();
    }
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "test-result") {
      return;
    }
    var outcome = document.getElementById("test-outcome");
    var form = builder();
    if (!outcome || !form) {
      return;
    }
    var url = form.querySelector('[name="url"]');
    // A late answer to a test of an older URL must not enable Save.
    var current = outcome.getAttribute("data-tested-url") === (url ? url.value : "");
    var succeeded = outcome.getAttribute("data-succeeded") === "true";
    var proof = document.getElementById("test_proof");
    if (succeeded && current) {
      proof.value = outcome.getAttribute("data-proof");
      setSaveEnabled(true);
      document.getElementById("save-hint").textContent = "The URL answered 2xx: you can save.";
    } else {
      proof.value = "";
      setSaveEnabled(false);
    }
  });
})();
