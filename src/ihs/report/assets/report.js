/* ihs report: hover tooltips and series toggles. No network, no eval, text only (textContent). */
(function () {
  "use strict";
  var tip = document.getElementById("ihs-tip");

  function target(event) {
    var node = event.target;
    return node && node.closest ? node.closest("[data-tip]") : null;
  }

  function place(event) {
    if (!tip || tip.hidden) {
      return;
    }
    var x = event.clientX + 14;
    var y = event.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth - 8) {
      x = Math.max(4, event.clientX - tip.offsetWidth - 14);
    }
    if (y + tip.offsetHeight > window.innerHeight - 8) {
      y = Math.max(4, event.clientY - tip.offsetHeight - 14);
    }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  if (tip) {
    document.addEventListener("mouseover", function (event) {
      var el = target(event);
      if (!el) {
        return;
      }
      tip.textContent = el.getAttribute("data-tip");
      tip.hidden = false;
      el.classList.add("hot");
      place(event);
    });
    document.addEventListener("mousemove", place);
    document.addEventListener("mouseout", function (event) {
      var el = target(event);
      if (el) {
        el.classList.remove("hot");
        tip.hidden = true;
      }
    });
  }

  var figures = document.querySelectorAll("[data-toggles]");
  Array.prototype.forEach.call(figures, function (fig) {
    var boxes = fig.querySelectorAll("input[data-dim]");
    function apply() {
      var off = {};
      Array.prototype.forEach.call(boxes, function (box) {
        if (!box.checked) {
          var dim = box.getAttribute("data-dim");
          off[dim] = off[dim] || {};
          off[dim][box.value] = true;
        }
      });
      var series = fig.querySelectorAll("[data-series]");
      Array.prototype.forEach.call(series, function (el) {
        var hidden = false;
        Object.keys(off).forEach(function (dim) {
          if (off[dim][el.getAttribute("data-" + dim)]) {
            hidden = true;
          }
        });
        el.style.display = hidden ? "none" : "";
      });
    }
    Array.prototype.forEach.call(boxes, function (box) {
      box.addEventListener("change", apply);
    });
    apply();
  });

  document.documentElement.classList.add("js");
})();
