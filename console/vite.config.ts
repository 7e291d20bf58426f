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
    // `npm run dev` against a finmatch (FINMATCH_API, default its own default port): the
    // gRPC-Web calls go to it, the console's files come fresh from src/.
    proxy: { "/finmatch.v1.": process.env.FINMATCH_API ?? "http://127.0.0.1:50051" },
  },
});
