#!/usr/bin/env node
// A Node.js gRPC client for a modelweave graph, generated at run time from protos/.
//
//   node client.js HOST:PORT GRAPH TEXT [--rpc infer|stream|both] [--json]
//                  [--timeout-ms N] [--request-id ID] [--protos DIR]
//
// Calls modelweave.v1.GraphService/Infer and/or InferStream through Ray Serve's gRPC
// proxy, with the graph name in the `application` metadata (Serve routes on it when
// several graphs are deployed). Prints the result and its trace spans (or, with
// --json, one JSON object per line). On an RPC error it prints the gRPC status code
// name (e.g. INVALID_ARGUMENT) and exits 1; bad usage exits 2.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const USAGE =
  'usage: node client.js HOST:PORT GRAPH TEXT [--rpc infer|stream|both] [--json] ' +
  '[--timeout-ms N] [--request-id ID] [--protos DIR]';

// Reverse map of grpc.status: 3 -> "INVALID_ARGUMENT".
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** Parses argv; exits 2 with the usage line on a mistake. */
function parseArgs(argv) {
  const opts = {
    rpc: 'both',
    json: false,
    timeoutMs: 0,
    requestId: '',
    // Default include dir: the repository's protos/ (examples/clients/node -> ../../../protos).
    protos: process.env.MODELWEAVE_PROTOS || path.resolve(__dirname, '..', '..', '..', 'protos'),
  };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--rpc') opts.rpc = value();
    else if (arg === '--json') opts.json = true;
    else if (arg === '--timeout-ms') opts.timeoutMs = Number(value());
    else if (arg === '--request-id') opts.requestId = value();
    else if (arg === '--protos') opts.protos = value();
    else if (arg === '-h' || arg === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
  if (positional.length !== 3) usage('need HOST:PORT, GRAPH and TEXT (TEXT may be "")');
  if (!['infer', 'stream', 'both'].includes(opts.rpc)) usage(`--rpc must be infer, stream or both`);
  if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs < 0) usage('--timeout-ms must be an integer >= 0');
  [opts.address, opts.graph, opts.text] = positional;
  return opts;
}

function usage(problem) {
  console.error(`error: ${problem}\n${USAGE}`);
  process.exit(2);
}

/** Loads modelweave/v1/service.proto with `protosDir` as the include directory. */
function loadService(protosDir) {
  const definition = protoLoader.loadSync('modelweave/v1/service.proto', {
    includeDirs: [protosDir],
    keepCase: false, // camelCase field names, as in protobuf's JSON mapping
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true, // InferEvent.event tells "span" from "result"
  });
  const proto = grpc.loadPackageDefinition(definition);
  return proto.modelweave.v1.GraphService;
}

function spanLine(span) {
  const extra = [
    span.attempt > 1 ? `attempt ${span.attempt}` : '',
    span.route ? `route=${span.route}` : '',
    span.verdict ? `verdict=${span.verdict}` : '',
    span.cacheHit ? 'cache hit' : '',
    span.error ? `ERROR ${span.error}` : '',
    span.detail || '',
  ].filter(Boolean);
  const ms = (span.latencyMs || 0).toFixed(2).padStart(8);
  return `  ${ms} ms  ${span.node} [${span.kind}] ${extra.join('  ')}`.trimEnd();
}

function printResponse(response) {
  const r = response.result || {};
  if (r.text) console.log(`text:           ${JSON.stringify(r.text.content || '')} (language=${r.text.language || '?'})`);
  if (r.classification) {
    console.log(`classification: ${r.classification.label} (${(r.classification.confidence || 0).toFixed(3)})`);
  }
  if (r.generation) console.log(`generation:     ${JSON.stringify(r.generation.text || '')}`);
  if (r.verdict) console.log(`verdict:        ${r.verdict.passed ? 'passed' : 'failed'} ${r.verdict.reason || ''}`);
  const trace = response.trace || {};
  console.log(`trace ${trace.requestId || ''} (${(trace.totalMs || 0).toFixed(1)} ms):`);
  for (const span of trace.spans || []) console.log(spanLine(span));
}

/** Common call options: a deadline so a dead server cannot hang the client. */
function callOptions(opts) {
  const budgetMs = (opts.timeoutMs || 30000) + 5000;
  return { deadline: new Date(Date.now() + budgetMs) };
}

function metadataFor(opts) {
  const md = new grpc.Metadata();
  md.set('application', opts.graph);
  return md;
}

function request(opts) {
  return {
    input: { text: { content: opts.text } },
    requestId: opts.requestId,
    timeoutMs: opts.timeoutMs,
  };
}

function infer(client, opts) {
  return new Promise((resolve, reject) => {
    client.Infer(request(opts), metadataFor(opts), callOptions(opts), (err, response) => {
      if (err) return reject(Object.assign(err, { rpc: 'Infer' }));
      if (opts.json) console.log(JSON.stringify({ rpc: 'Infer', response }));
      else {
        console.log('== Infer');
        printResponse(response);
      }
      resolve();
    });
  });
}

function inferStream(client, opts) {
  return new Promise((resolve, reject) => {
    if (!opts.json) console.log('== InferStream');
    const call = client.InferStream(request(opts), metadataFor(opts), callOptions(opts));
    let sawResult = false;
    call.on('data', (event) => {
      if (opts.json) {
        console.log(JSON.stringify({ rpc: 'InferStream', event }));
      } else if (event.event === 'span') {
        console.log(spanLine(event.span));
      } else if (event.event === 'result') {
        printResponse(event.result);
      }
      if (event.event === 'result') sawResult = true;
    });
    call.on('error', (err) => reject(Object.assign(err, { rpc: 'InferStream' })));
    call.on('end', () => {
      if (sawResult) resolve();
      else reject(Object.assign(new Error('stream ended without a result'), { rpc: 'InferStream', code: grpc.status.INTERNAL }));
    });
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  let GraphService;
  try {
    GraphService = loadService(opts.protos);
  } catch (err) {
    console.error(`error: cannot load modelweave/v1/service.proto from ${opts.protos}: ${err.message}`);
    return 2;
  }
  const client = new GraphService(opts.address, grpc.credentials.createInsecure());
  try {
    if (opts.rpc === 'infer' || opts.rpc === 'both') await infer(client, opts);
    if (opts.rpc === 'stream' || opts.rpc === 'both') await inferStream(client, opts);
    return 0;
  } catch (err) {
    const name = STATUS_NAMES[err.code] || 'UNKNOWN';
    const details = err.details || err.message;
    console.error(`error: ${err.rpc || 'call'} failed: ${name} (code ${err.code}): ${details}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => {
  process.exitCode = code;
});
