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
  // failing silently. A stale Test Now response is never swapped (see below).
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status >= 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
    if (isStaleTest(event.detail.xhr)) {
      event.detail.shouldSwap = false;
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
  // testGeneration increases on every press of Test Now and every change to a request
  // setting. A Test Now request remembers the generation it was sent in, and only a
  // response for the current generation is shown, so a late 2xx for a previous URL or a
  // superseded press can never enable Save. Requests are superseded this way rather
  // than aborted because htmx 2.0.11 logs every aborted request as a console error.
  var testGeneration = 0;

  function isTestRequest(element) {
    return Boolean(element && element.id === "test-now-button");
  }

  function isStaleTest(xhr) {
    var generation = xhr.pdautoTestGeneration;
    return generation !== undefined && generation !== testGeneration;
  }

  function setProgressShown(shown) {
    var progress = document.getElementById("test-progress");
    if (progress) {
      progress.classList.toggle("superseded", !shown);
    }
  }

  function setSaveEnabled(enabled) {
    var save = document.getElementById("save-button");
    if (save) {
      save.disabled = !enabled;
    }
  }

  function setSaveHint(text) {
    var hint = document.getElementById("save-hint");
    if (hint) {
      hint.textContent = text;
    }
  }

  function clearTest() {
    testGeneration += 1;
    // A test still running is for the old settings, so its response will be dropped.
    setProgressShown(false);
    var proof = document.getElementById("test_proof");
    if (proof) {
      proof.value = "";
    }
    var result = document.getElementById("test-result");
    if (result) {
      result.innerHTML = "";
    }
    setSaveEnabled(false);
    setSaveHint("The request settings changed: press Test Now again before saving.");
  }

  function isRequestSetting(target) {
    return Boolean(target.closest && target.closest("[data-request-setting]"));
  }

  document.addEventListener("input", function (event) {
    if (isRequestSetting(event.target)) {
      clearTest();
    }
  });
  document.addEventListener("change", function (event) {
    if (isRequestSetting(event.target)) {
      clearTest();
    }
  });

  // htmx:confirm fires on each press before htmx sends or queues the request.
  document.addEventListener("htmx:confirm", function (event) {
    if (isTestRequest(event.detail.elt)) {
      testGeneration += 1;
      setProgressShown(true);
    }
  });

  document.addEventListener("htmx:beforeSend", function (event) {
    if (isTestRequest(event.detail.elt)) {
      event.detail.xhr.pdautoTestGeneration = testGeneration;
    }
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "test-result") {
      return;
    }
    var outcome = document.getElementById("test-outcome");
    var proof = document.getElementById("test_proof");
    if (!outcome || !proof) {
      return;
    }
    if (outcome.getAttribute("data-succeeded") === "true") {
      proof.value = outcome.getAttribute("data-proof");
      setSaveEnabled(true);
      setSaveHint("The URL answered 2xx: you can save.");
    } else {
      proof.value = "";
      setSaveEnabled(false);
      setSaveHint("Save is enabled once a test answers 2xx: fix what failed, then press Test Now again.");
    }
  });
})();

// Builder conditions: add a row from the template of the chosen model, remove a row.
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-add-condition]");
    if (add) {
      var model = document.querySelector('select[name="event_model"]');
      var template = document.getElementById("condition-row-" + (model ? model.value : "person"));
      var rows = document.getElementById("conditions");
      if (template && rows) {
        rows.appendChild(template.content.cloneNode(true));
        var selects = rows.querySelectorAll(".condition-row select");
        if (selects.length) {
          selects[selects.length - 2].focus();
        }
      }
      return;
    }
    var remove = event.target.closest("[data-remove-condition]");
    if (remove) {
      var row = remove.closest(".condition-row");
      if (row) {
        row.remove();
      }
      var button = document.getElementById("add-condition");
      if (button) {
        button.focus();
      }
    }
  });
})();

// Builder steps after Call API: add a step from its kind's template, move it up or
// down, remove it. The form sends the steps in the order they appear.
(function () {
  "use strict";

  var PLACEHOLDER_KEY = "__key__";
  var KEYED_ATTRIBUTES = ["name", "id", "value", "aria-describedby"];
  var addedSteps = 0;

  // Return a key that no other step of the page has, because a step's inputs are named after it.
  function newStepKey() {
    addedSteps += 1;
    return "n" + Date.now().toString(36) + addedSteps;
  }

  function setStepKey(fragment, key) {
    fragment.querySelectorAll("[name], [id], [aria-describedby]").forEach(function (element) {
      KEYED_ATTRIBUTES.forEach(function (attribute) {
        var value = element.getAttribute(attribute);
        if (value && value.indexOf(PLACEHOLDER_KEY) !== -1) {
          element.setAttribute(attribute, value.split(PLACEHOLDER_KEY).join(key));
        }
      });
    });
  }

  function addStep(kind) {
    var template = document.getElementById("step-template-" + kind);
    var list = document.getElementById("steps");
    if (!template || !list) {
      return;
    }
    var fragment = template.content.cloneNode(true);
    setStepKey(fragment, newStepKey());
    var step = fragment.querySelector("[data-step]");
    list.appendChild(fragment);
    var first = step && step.querySelector("input:not([type=hidden]), select, textarea");
    if (first) {
      first.focus();
    }
  }

  function moveStep(button) {
    var step = button.closest("[data-step]");
    if (!step) {
      return;
    }
    if (button.getAttribute("data-move-step") === "up") {
      if (step.previousElementSibling) {
        step.parentNode.insertBefore(step, step.previousElementSibling);
      }
    } else if (step.nextElementSibling) {
      step.parentNode.insertBefore(step.nextElementSibling, step);
    }
    // Moving an element in the document takes the focus away from the button in it.
    button.focus();
  }

  function removeStep(button) {
    var step = button.closest("[data-step]");
    if (!step) {
      return;
    }
    var neighbour = step.nextElementSibling || step.previousElementSibling;
    step.remove();
    var next = neighbour
      ? neighbour.querySelector("[data-remove-step]")
      : document.querySelector("[data-add-step]");
    if (next) {
      next.focus();
    }
  }

  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-add-step]");
    if (add) {
      addStep(add.getAttribute("data-add-step"));
      return;
    }
    var move = event.target.closest("[data-move-step]");
    if (move) {
      moveStep(move);
      return;
    }
    var remove = event.target.closest("[data-remove-step]");
    if (remove) {
      removeStep(remove);
    }
  });

  // The hint lists the fields that templates may use, for the chosen kind of record.
  document.addEventListener("change", function (event) {
    if (event.target.name !== "event_model") {
      return;
    }
    var hint = document.getElementById("step-fields-hint");
    var text = hint && hint.getAttribute("data-hint-" + event.target.value);
    if (text) {
      hint.textContent = text;
    }
  });
})();
