import { describe, expect, it } from "vitest";
import { excerpt, locateErrors, profileName } from "./profile-errors";

const PROFILE = `name: "Thermostat"
manufacturer: "Acme"
deviceResources:
  - name: "Temperature"
    properties: { valueType: "Float64", readWrite: "R", units: "C", minimum: -40, maximum: 125 }
  - name: Setpoint
    properties:
      valueType: Float64
      readWrite: RW
      units: "degC"
  - name: 'Temperature'
    properties: { valueType: "Int8" }
deviceCommands:
  - name: "Climate"
    readWrite: "R"
    resourceOperations:
      - { deviceResource: "Temperature" }
      - deviceResource: "Humidity"
  - name: Setpoint
    readWrite: W
    resourceOperations: []
`;

describe("locateErrors", () => {
  it("takes the line a YAML error names, not the line of its context", () => {
    const m =
      "invalid device profile YAML: did not find expected key at line 7 column 6, while parsing a block mapping at line 4 column 5";
    expect(locateErrors(m, PROFILE)).toEqual([{ line: 7, message: m.slice("invalid device profile YAML: ".length) }]);
  });

  it("keeps a parse error whole, though it may hold a semicolon", () => {
    const m = "invalid device profile YAML: deviceResources[0].properties.valueType: unknown value type 'Int9'; one of Int8, Int16 at line 5 column 31";
    const e = locateErrors(m, PROFILE);
    expect(e).toHaveLength(1);
    expect(e[0].line).toBe(5);
  });

  it("reads a byte position as the line that holds it", () => {
    const text = "name: é\nlabels: [\n";
    // "name: é\n" is 9 bytes: byte 9 is the start of line 2.
    expect(locateErrors("invalid device profile YAML: unexpected end at position 9", text)[0].line).toBe(2);
    expect(locateErrors("invalid device profile YAML: unexpected end at position 3", text)[0].line).toBe(1);
  });

  it("finds each of several checks by the names it gives, sorted by line", () => {
    const m = [
      "deviceCommand 'Climate' refers to unknown deviceResource 'Humidity'",
      "deviceResource 'Temperature' is defined twice",
      "deviceCommand 'Setpoint' reuses the name of another resource or command",
      "deviceCommand 'Setpoint' has no resourceOperations",
      "deviceResource 'Setpoint': units 'degC' is not a known unit of measure",
    ].join("; ");
    expect(locateErrors(m, PROFILE)).toEqual([
      { line: 10, message: "deviceResource 'Setpoint': units 'degC' is not a known unit of measure" },
      { line: 11, message: "deviceResource 'Temperature' is defined twice" },
      { line: 18, message: "deviceCommand 'Climate' refers to unknown deviceResource 'Humidity'" },
      { line: 19, message: "deviceCommand 'Setpoint' reuses the name of another resource or command" },
      { line: 19, message: "deviceCommand 'Setpoint' has no resourceOperations" },
    ]);
  });

  it("finds a resource in flow style and a command's resource operation in flow style", () => {
    const m = "deviceResource 'Temperature': minimum 200 is greater than maximum 125";
    expect(locateErrors(m, PROFILE)[0].line).toBe(4);
    const flow = PROFILE.replace('deviceResource: "Humidity"', 'deviceResource: "Temperature"').replace(
      '{ deviceResource: "Temperature" }',
      '{ deviceResource: "Pressure" }',
    );
    expect(locateErrors("deviceCommand 'Climate' refers to unknown deviceResource 'Pressure'", flow)[0].line).toBe(17);
  });

  it("finds names in a JSON document", () => {
    const json = `{
  "name": "p1",
  "deviceResources": [
    { "name": "A", "properties": { "valueType": "Int8" } }
  ],
  "deviceCommands": [
    { "name": "C", "resourceOperations": [ { "deviceResource": "B" } ] }
  ]
}`;
    expect(locateErrors("deviceCommand 'C' refers to unknown deviceResource 'B'", json)[0].line).toBe(7);
    expect(locateErrors("name 'p/1' contains the reserved character '/'", json)[0].line).toBe(2);
  });

  it("points a bad or empty profile name at the document's own name", () => {
    expect(locateErrors("name must not be empty", 'description: x\nname: ""\n')[0].line).toBe(2);
    expect(locateErrors("name 'a/b' contains the reserved character '/'", "labels: []\nname: a/b\n")[0].line).toBe(2);
  });

  it("leaves a message it cannot place without a line, after those it can", () => {
    const m = "name must not be empty; deviceCommand 'Climate' has no resourceOperations";
    expect(locateErrors(m, "deviceCommands:\n  - name: Climate\n")).toEqual([
      { line: 2, message: "deviceCommand 'Climate' has no resourceOperations" },
      { line: null, message: "name must not be empty" },
    ]);
    expect(locateErrors("multipart body has no 'file' field", "")).toEqual([
      { line: null, message: "multipart body has no 'file' field" },
    ]);
  });

  it("never names a line beyond the text", () => {
    expect(locateErrors("invalid device profile YAML: EOF at line 9 column 1", "a: 1\nb: [\n")[0].line).toBe(3);
  });
});

describe("excerpt", () => {
  it("shows a short text whole", () => {
    expect(excerpt(12, [3])).toEqual([[1, 12]]);
    expect(excerpt(0, [])).toEqual([]);
  });

  it("shows the lines around each error of a long text, joining close ones", () => {
    expect(excerpt(100, [50, 10, 12, 90], 3)).toEqual([
      [7, 15],
      [47, 53],
      [87, 93],
    ]);
    // One hidden line is not worth a gap: 3..9 and 11..17 join.
    expect(excerpt(100, [6, 14], 3)).toEqual([[3, 17]]);
    expect(excerpt(100, [1, 100], 3)).toEqual([
      [1, 4],
      [97, 100],
    ]);
  });
});

describe("profileName", () => {
  it("reads the document's name, quoted or not", () => {
    expect(profileName(PROFILE)).toBe("Thermostat");
    expect(profileName("labels: []\nname: plain-name  # the name\n")).toBe("plain-name");
    expect(profileName("name: 'single'\n")).toBe("single");
    expect(profileName('{"name": "from-json", "deviceResources": []}')).toBe("from-json");
    expect(profileName("deviceResources:\n  - name: only-a-resource\n")).toBeNull();
  });
});
