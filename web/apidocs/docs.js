// Renders /openapi.json with the vendored Swagger UI. A file of its own (not an inline
// script) so the page's Content-Security-Policy can forbid inline scripts.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never call out to an online validator: the page works offline
    tryItOutEnabled: false,
  });
});
