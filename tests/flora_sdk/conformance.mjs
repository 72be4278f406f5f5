// FLORA's own TypeScript SDK (@flora-ai/flora) against the provider emulator.
//
//   node conformance.mjs <api|webhooks|vectors|techniques> <config.json>
//
// Prints one JSON object on stdout; `problems` lists every disagreement (empty = conforms).
// Each object the SDK returns is checked against the interfaces the installed SDK itself
// declares (its .d.ts files are read here, not transcribed), so a field of the wrong type, a
// null where the SDK says `?: T`, or a field it does not declare is a problem.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [mode, configPath] = process.argv.slice(2);
const config = JSON.parse(readFileSync(configPath, 'utf8'));
// Resolve the package as code in the install folder would (its node_modules).
const require = createRequire(join(config.sdk_prefix, 'package.json'));
const sdk = require('@flora-ai/flora');
const sdkRoot = join(config.sdk_prefix, 'node_modules', '@flora-ai', 'flora');
const problems = [];
const problem = (message) => problems.push(message);

// ── the SDK's declared types ────────────────────────────────────────────────────────────────

/** Interfaces (`X`, `Namespace.X`) and type aliases of a Stainless-generated .d.ts. */
function readDeclarations(file) {
  const text = readFileSync(join(sdkRoot, file), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
  const declarations = new Map();
  let namespace = null;
  let current = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let match;
    if (current) {
      if (line === '}') {
        declarations.set(current.name, { kind: 'interface', fields: current.fields });
        current = null;
      } else if ((match = /^(\w+)(\??):\s*(.+);$/.exec(line))) {
        current.fields.push({ name: match[1], optional: match[2] === '?', type: match[3] });
      } else if (line) {
        current.fields.push({ name: null, unparsed: line });
      }
    } else if ((match = /^export declare namespace (\w+) \{$/.exec(line))) {
      namespace = match[1];
    } else if ((match = /^(?:export )?interface (\w+) \{$/.exec(line))) {
      const name = namespace && !line.startsWith('export') ? `${namespace}.${match[1]}` : match[1];
      current = { name, fields: [] };
    } else if ((match = /^export type (\w+) = (.+);$/.exec(line))) {
      declarations.set(match[1], { kind: 'alias', type: match[2] });
    } else if (line === '}' && namespace) {
      namespace = null;
    }
  }
  return declarations;
}

const declarations = new Map([
  ...readDeclarations('resources/techniques/runs.d.ts'),
  ...readDeclarations('resources/techniques/techniques.d.ts'),
  ...readDeclarations('lib/webhooks.d.ts'),
]);

/** Splits `A | B` at the top level (not inside `<...>`). */
function alternatives(type) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < type.length; i++) {
    if (type[i] === '<') depth++;
    else if (type[i] === '>') depth--;
    else if (type[i] === '|' && depth === 0) {
      parts.push(type.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(type.slice(start).trim());
  return parts;
}

/** Why `value` is not of the declared `type`, or null. Unknown syntax is an error, never a pass. */
function mismatch(type, value, path, extras) {
  const options = alternatives(type);
  if (options.length > 1) {
    const reasons = options.map((option) => mismatch(option, value, path, extras));
    return reasons.includes(null) ? null : `${path}: ${JSON.stringify(value)} is not ${type}`;
  }
  let match;
  if ((match = /^'([^']*)'$/.exec(type))) {
    return value === match[1] ? null : `${path}: ${JSON.stringify(value)} is not '${match[1]}'`;
  }
  if (type === 'string' || type === 'boolean') {
    return typeof value === type ? null : `${path}: ${JSON.stringify(value)} is not a ${type}`;
  }
  if (type === 'number') {
    return typeof value === 'number' && Number.isFinite(value) ? null : `${path}: ${JSON.stringify(value)} is not a number`;
  }
  if (type === 'null') return value === null ? null : `${path}: ${JSON.stringify(value)} is not null`;
  if ((match = /^Array<(.+)>$/.exec(type))) {
    if (!Array.isArray(value)) return `${path}: ${JSON.stringify(value)} is not an array`;
    for (const [index, item] of value.entries()) {
      const reason = mismatch(match[1], item, `${path}[${index}]`, extras);
      if (reason) return reason;
    }
    return null;
  }
  const declared = declarations.get(type);
  if (!declared) throw new Error(`${path}: the checker cannot read the SDK type '${type}'`);
  if (declared.kind === 'alias') return mismatch(declared.type, value, path, extras);
  return objectMismatch(type, declared.fields, value, path, extras);
}

function objectMismatch(typeName, fields, value, path, extras) {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return `${path}: ${JSON.stringify(value)} is not a ${typeName} object`;
  }
  for (const field of fields) {
    if (field.name === null) throw new Error(`${typeName}: the checker cannot read '${field.unparsed}'`);
    if (!(field.name in value)) {
      if (!field.optional) return `${path}.${field.name}: required by ${typeName}, missing`;
      continue;
    }
    // JSON has no undefined: an optional field the SDK types `?: T` must be absent, not null.
    const reason = mismatch(field.type, value[field.name], `${path}.${field.name}`, extras);
    if (reason) return reason;
  }
  const known = new Set([...fields.map((f) => f.name), ...(extras[typeName] ?? [])]);
  const unknown = Object.keys(value).filter((key) => !known.has(key));
  return unknown.length ? `${path}: ${typeName} does not declare ${unknown.join(', ')}` : null;
}

function expectType(typeName, value, path, extras = {}) {
  const reason = mismatch(typeName, value, path, extras);
  if (reason) problem(reason);
}

/** Unix milliseconds of about now: catches seconds where the SDK means milliseconds. */
function expectRecentMs(value, path) {
  if (value === undefined) return;
  if (!Number.isInteger(value) || Math.abs(Date.now() - value) > 10 * 60 * 1000) {
    problem(`${path}: ${value} is not a unix-ms time of about now`);
  }
}

function expectRunTimes(run, path) {
  for (const name of ['created_at', 'started_at', 'completed_at']) expectRecentMs(run[name], `${path}.${name}`);
}

async function expectApiError(promise, ErrorClass, status, code, path) {
  try {
    await promise;
    problem(`${path}: succeeded, expected ${status} ${code}`);
  } catch (error) {
    if (!(error instanceof ErrorClass) || error.status !== status || error.error?.error?.code !== code) {
      problem(`${path}: expected ${ErrorClass.name} ${status} ${code}, got ${error}`);
    }
  }
}

// ── modes ───────────────────────────────────────────────────────────────────────────────────

/** create (with callback_url + idempotency_key), retrieve, and auto-paginated list. */
async function api() {
  const client = new sdk.FLORA({ apiKey: config.api_key, baseURL: config.base_url, maxRetries: 0 });
  const technique = config.technique_id;
  const pollUrl = (runId) => `${config.base_url}/techniques/${technique}/runs/${runId}`;
  const params = (index) => ({
    inputs: [{ id: 'prompt', type: 'text', value: `row ${index}` }],
    mode: 'async',
    callback_url: config.callback_url,
    idempotency_key: `${config.key_prefix}-${index}`,
  });

  const created = [];
  for (let index = 0; index < config.runs; index++) {
    const run = await client.techniques.runs.create(technique, params(index));
    const path = `create[${index}]`;
    expectType('RunCreateResponse', run, path);
    expectRunTimes(run, path);
    if (run.status !== 'pending') problem(`${path}: status ${run.status}, expected pending`);
    if (run.poll_url !== pollUrl(run.run_id)) problem(`${path}: poll_url ${run.poll_url}`);
    created.push(run.run_id);
  }
  await expectApiError(
    client.techniques.runs.create(technique, params(0)),
    sdk.ConflictError,
    409,
    'idempotency_duplicate',
    'create with a used idempotency_key',
  );

  const retrieved = {};
  for (const runId of created) {
    const run = await client.techniques.runs.retrieve(runId, { techniqueId: technique });
    const path = `retrieve(${runId})`;
    expectType('RunRetrieveResponse', run, path);
    expectRunTimes(run, path);
    if (run.run_id !== runId || run.poll_url !== pollUrl(runId)) problem(`${path}: another run ${run.run_id}`);
    if (run.status === 'completed' && !(run.outputs?.length > 0)) problem(`${path}: completed without outputs`);
    retrieved[runId] = run.status;
  }
  await expectApiError(
    client.techniques.runs.retrieve('run_unknown', { techniqueId: technique }),
    sdk.NotFoundError,
    404,
    'not_found',
    'retrieve of an unknown run',
  );

  const listed = [];
  // The contract lists each run with its technique_id too, which the SDK does not declare.
  const extras = { RunListResponse: ['technique_id'] };
  for await (const item of client.techniques.runs.list({ technique_id: technique, limit: config.page_limit })) {
    const path = `list[${listed.length}]`;
    expectType('RunListResponse', item, path, extras);
    expectRunTimes(item, path);
    if (item.technique_run_id !== item.run_id) problem(`${path}: technique_run_id ${item.technique_run_id}`);
    if (item.technique?.technique_id !== technique || item.technique_id !== technique) {
      problem(`${path}: technique ${JSON.stringify(item.technique)} / ${item.technique_id}`);
    }
    if (item.poll_url !== pollUrl(item.run_id)) problem(`${path}: poll_url ${item.poll_url}`);
    listed.push(item.run_id);
  }
  const newestFirst = [...created].reverse();
  if (JSON.stringify(listed) !== JSON.stringify(newestFirst)) {
    problem(`list: got ${listed.length} runs ${JSON.stringify(listed)}, expected newest first ${JSON.stringify(newestFirst)}`);
  }
  return { created, retrieved, listed };
}

function header(headers, name) {
  const entry = Object.entries(headers).find(([key]) => key.toLowerCase() === name.toLowerCase());
  return entry?.[1];
}

async function expectRefused(promise, path) {
  try {
    await promise;
    problem(`${path}: unwrap accepted it`);
  } catch (error) {
    if (!(error instanceof sdk.WebhookVerificationError)) problem(`${path}: threw ${error}, not a WebhookVerificationError`);
  }
}

/** webhooks.unwrap on the deliveries the emulator made: raw bytes and headers as received. */
async function webhooks() {
  const client = new sdk.FLORA({ apiKey: 'unused', baseURL: 'http://127.0.0.1:9', maxRetries: 0 });
  const events = [];
  for (const [index, delivery] of config.deliveries.entries()) {
    const path = `delivery[${index}]`;
    const raw = new Uint8Array(Buffer.from(delivery.body_b64, 'base64'));
    let event;
    try {
      event = await client.webhooks.unwrap(raw, delivery.headers, config.secret);
    } catch (error) {
      problem(`${path}: unwrap threw ${error}`);
      continue;
    }
    expectType('WebhookEvent', event, path);
    expectRecentMs(event.created_at, `${path}.created_at`);
    if (!/^whd_\w+$/.test(event.id)) problem(`${path}: id ${event.id}`);
    if (header(delivery.headers, 'Flora-Webhook-Id') !== event.id) problem(`${path}: Flora-Webhook-Id is not the id`);
    if (header(delivery.headers, 'Flora-Event') !== event.type) problem(`${path}: Flora-Event is not the type`);
    if (!header(delivery.headers, 'Content-Type')?.startsWith('application/json')) problem(`${path}: Content-Type`);
    if (event.type !== `run.${event.data?.status}`) problem(`${path}: type ${event.type} with status ${event.data?.status}`);
    const failed = event.data?.status === 'failed';
    if (failed !== ('error_code' in event.data) || failed !== ('error_message' in event.data)) {
      problem(`${path}: error fields must be present exactly on failures`);
    }
    await expectRefused(client.webhooks.unwrap(raw, delivery.headers, `${config.secret}x`), `${path} wrong secret`);
    const later = () => Date.now() + (config.tolerance_s + 60) * 1000;
    await expectRefused(client.webhooks.unwrap(raw, delivery.headers, config.secret, { now: later }), `${path} stale`);
    events.push(event);
  }
  return { events };
}

/** The SDK's verdict on signed vectors made by the emulator's signing path. */
async function vectors() {
  const client = new sdk.FLORA({ apiKey: 'unused', baseURL: 'http://127.0.0.1:9', maxRetries: 0 });
  const verdicts = {};
  for (const vector of config.vectors) {
    const raw = new Uint8Array(Buffer.from(vector.body_b64, 'base64'));
    try {
      await client.webhooks.unwrap(raw, vector.headers, vector.secret);
      verdicts[vector.name] = true;
    } catch (error) {
      if (!(error instanceof sdk.WebhookVerificationError)) problem(`${vector.name}: threw ${error}`);
      verdicts[vector.name] = false;
    }
  }
  return { verdicts };
}

/** techniques.retrieve of catalog and open techniques, a 404, and FLORA's input validation. */
async function techniques() {
  const client = new sdk.FLORA({ apiKey: config.api_key, baseURL: config.base_url, maxRetries: 0 });
  const retrieved = {};
  for (const id of config.technique_ids) {
    const technique = await client.techniques.retrieve(id);
    expectType('TechniqueRetrieveResponse', technique, `retrieve(${id})`);
    if (technique.technique_id !== id) problem(`retrieve(${id}): technique_id ${technique.technique_id}`);
    retrieved[id] = technique;
  }
  await expectApiError(
    client.techniques.retrieve(config.missing_id),
    sdk.NotFoundError,
    404,
    'not_found',
    `retrieve(${config.missing_id})`,
  );
  // A run whose inputs do not fit a catalog technique is refused before it exists.
  try {
    await client.techniques.runs.create(config.validated_id, { inputs: config.bad_inputs, mode: 'async' });
    problem('create with inputs that do not fit: succeeded');
  } catch (error) {
    const body = error.error?.error;
    if (!(error instanceof sdk.BadRequestError) || body?.code !== 'input_validation_error' || !body?.fields) {
      problem(`create with inputs that do not fit: expected 400 input_validation_error with fields, got ${error}`);
    }
    retrieved.validation_fields = body?.fields ?? null;
  }
  return { retrieved };
}

const modes = { api, webhooks, vectors, techniques };
if (!modes[mode]) {
  console.error(`usage: node conformance.mjs <${Object.keys(modes).join('|')}> <config.json>`);
  process.exit(2);
}
const version = JSON.parse(readFileSync(join(sdkRoot, 'package.json'), 'utf8')).version;
if (version !== config.sdk_version) problem(`installed @flora-ai/flora ${version}, expected ${config.sdk_version}`);
const result = await modes[mode]();
process.stdout.write(JSON.stringify({ ...result, sdk_version: version, problems }) + '\n');
