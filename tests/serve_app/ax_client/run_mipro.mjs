// Runs Ax's AxMiPRO against a mipro-ray Serve app and prints, as one JSON line on stdout,
// what the client reported: its trials (number, score, params) and the best parameters.
//
// Usage: node run_mipro.mjs <endpoint> <numTrials> <optimizeTopP: 0|1>
//
// The AI is Ax's AxMockAIService, so no LLM is needed. A fetch shim records every request
// the client makes and holds back its final `DELETE /studies/{name}`, so the Python test can
// compare the client's view with `GET /studies/{name}/results` before deleting the study.
import { AxMiPRO, AxMockAIService, ax } from '@ax-llm/ax';

const [endpoint, numTrialsArg, topPArg] = process.argv.slice(2);
const numTrials = Number.parseInt(numTrialsArg ?? '6', 10);
const optimizeTopP = topPArg === '1';

const calls = [];
let heldBackDelete = null;
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init = {}) => {
  const method = init.method ?? 'GET';
  const path = String(url).slice(endpoint.replace(/\/$/, '').length);
  if (method === 'DELETE' && path.startsWith('/studies/')) {
    heldBackDelete = path;
    calls.push({ method, path, status: 200, heldBack: true });
    return new Response(JSON.stringify({ message: 'held back by the test' }), { status: 200 });
  }
  const response = await realFetch(url, init);
  const text = await response.clone().text();
  calls.push({ method, path, status: response.status, body: init.body ?? null, response: text });
  return response;
};

// Deterministic-enough mock: every prompt gets the same well-formed answer.
const ai = new AxMockAIService({
  features: { functions: false, streaming: false },
  chatResponse: async () => ({
    results: [{ index: 0, content: 'Answer: Paris', finishReason: 'stop' }],
    modelUsage: { ai: 'mock', model: 'mock', tokens: { promptTokens: 10, completionTokens: 5, totalTokens: 15 } },
  }),
});

const program = ax('question:string -> answer:string');
const examples = [
  { question: 'Capital of France?', answer: 'Paris' },
  { question: 'Capital of Italy?', answer: 'Rome' },
  { question: 'Capital of Spain?', answer: 'Madrid' },
  { question: 'Capital of Germany?', answer: 'Berlin' },
];
// Scores vary per evaluation so the study has a real best trial.
const metric = async ({ prediction, example }) =>
  (prediction?.answer === example.answer ? 0.5 : 0) + Math.random() * 0.5;

const optimizer = new AxMiPRO({
  studentAI: ai,
  numTrials,
  numCandidates: 3,
  optimizerEndpoint: endpoint,
  optimizerTimeout: 30000,
  optimizerRetries: 1,
  optimizeTopP,
  earlyStoppingTrials: 0,
  minibatch: false,
  verbose: false,
  seed: 7,
});

const originalLog = console.log;
console.log = (...args) => console.error(...args); // keep stdout for the JSON result
let result;
let error = null;
try {
  result = await optimizer.compile(program, examples, metric);
} catch (e) {
  error = String(e?.stack ?? e);
}
console.log = originalLog;

const configs = result?.optimizedProgram?.configurationHistory ?? [];
const scores = result?.optimizedProgram?.scoreHistory ?? [];
const trials = configs.map((config, i) => ({
  number: config.trialNumber,
  value: scores[i],
  temperature: config.temperature,
  bootstrappedDemos: config.bootstrappedDemos,
  topP: config.topP ?? null,
}));
const study = calls.find((c) => c.method === 'POST' && c.path === '/optimize');
process.stdout.write(
  `${JSON.stringify({
    error,
    studyName: study ? JSON.parse(study.body).study_name : null,
    optimizeRequest: study ? JSON.parse(study.body) : null,
    trials,
    bestScore: result?.bestScore ?? null,
    finalConfiguration: result?.finalConfiguration ?? null,
    heldBackDelete,
    calls: calls.map(({ method, path, status }) => ({ method, path, status })),
  })}\n`,
);
