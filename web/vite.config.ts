// The console is served by the gateway under /ui/ from this build (dist/), as static files
// with a strict Content-Security-Policy: no inline scripts or styles, so nothing here may
// emit any.
import { defineConfig } from "vitest/config";

export default defineConfig({
  base: "/ui/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    target: "es2022",
    // One small entry chunk; the chart library comes with the device page only.
    modulePreload: { polyfill: false },
    cssCodeSplit: true,
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
