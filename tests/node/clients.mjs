// The official OpenAI Node SDK against the proxy: `node clients.mjs SCENARIO` with ROUTER_URL
// set prints one JSON line saying what the SDK made of the answer (tests/test_clients_node.py).
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.ROUTER_URL}/v1`, apiKey: "unused", maxRetries: 0 });
const hello = [{ role: "user", content: "Hello" }];
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const person = {
  type: "json_schema",
  json_schema: {
    name: "person",
    strict: true,
    schema: {
      type: "object",
      properties: { name: { type: "string" }, age: { type: "integer" } },
      required: ["name", "age"],
      additionalProperties: false,
    },
  },
};

const scenarios = {
  async chat() {
    const r = await client.chat.completions.create({ model: "kimi", messages: hello });
    return { id: r.id, model: r.model, content: r.choices[0].message.content, usage: r.usage };
  },
  async chat_stream() {
    const stream = await client.chat.completions.create({ model: "kimi", messages: hello, stream: true });
    const pieces = [];
    for await (const chunk of stream) pieces.push(chunk.choices[0]?.delta?.content ?? "");
    return { pieces: pieces.filter((p) => p).length, content: pieces.join("") };
  },
  async completion() {
    const r = await client.completions.create({ model: "llama", prompt: "Say hi" });
    return { id: r.id, text: r.choices[0].text };
  },
  async completion_stream() {
    const stream = await client.completions.create({
      model: "llama", prompt: "Say hi", stream: true, stream_options: { include_usage: true },
    });
    let text = "";
    let usage = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    return { text, usage };
  },
  async poolside_completion() {
    const r = await client.completions.create({ model: "malibu", prompt: "Say hi" });
    return { id: r.id, text: r.choices[0].text };
  },
  async tool_call() {
    const r = await client.chat.completions.create({ model: "kimi", messages: hello, tools: [weather] });
    return { finish_reason: r.choices[0].finish_reason, tool_calls: r.choices[0].message.tool_calls };
  },
  async tool_call_stream() {
    // The SDK's stream helper assembles the tool call from its streamed pieces.
    const stream = client.chat.completions.stream({ model: "kimi", messages: hello, tools: [weather] });
    const done = await stream.finalChatCompletion();
    return { finish_reason: done.choices[0].finish_reason, tool_calls: done.choices[0].message.tool_calls };
  },
  async json_schema() {
    const r = await client.chat.completions.create({ model: "kimi", messages: hello, response_format: person });
    return { parsed: JSON.parse(r.choices[0].message.content) };
  },
  async n_choices() {
    const r = await client.chat.completions.create({ model: "llama", messages: hello, n: 2 });
    return { indexes: r.choices.map((c) => c.index) };
  },
  async models() {
    const page = await client.models.list();
    return { ids: page.data.map((m) => m.id).sort() };
  },
  async error() {
    try {
      await client.chat.completions.create({ model: "no-such-model", messages: hello });
      return { thrown: false };
    } catch (err) {
      return { thrown: true, cls: err.constructor.name, status: err.status, code: err.code, type: err.type };
    }
  },
};

const name = process.argv[2];
if (!(name in scenarios)) {
  console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
console.log(JSON.stringify(await scenarios[name]()));
