import { defineConfig } from "vite";

// The bundle is committed (console/dist) and embedded in the finmatch binary, which serves it
// at `/`; relative asset URLs keep it working behind any path prefix a proxy adds.
export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Debian's Chromium and any browser of the last few years.
    target: "es2022",
    chunkSizeWarningLimit: 1200,
  },
  server: {
    // `npm run dev` against a finmatch on its default port: gRPC-Web calls go to it.
    proxy: { "/finmatch.v1.": "http://127.0.0.1:50051" },
  },
});
