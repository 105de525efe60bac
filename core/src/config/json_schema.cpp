#include "config/json_schema.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <optional>
#include <regex>
#include <unordered_map>
#include <unordered_set>
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validator.hpp>

#include "config/yaml_json.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

extern const char* const kFlowSchemaText;  // generated from schemas/flow.schema.json

// libstdc++'s std::regex matches depth-first by default, recursing once per character of the
// subject: a 20,000-character string against ^(a|b)*$ overflows an 8 MiB stack. Every `pattern` is
// therefore compiled here in its breadth-first (Thompson NFA) mode, whose recursion is bounded by
// the pattern, not the subject, and handed to valijson through its regex cache. Three matches stay
// depth-first, and what they see is bounded to kMaxDepthFirstSubject bytes before matching (a
// longer value is refused with a message saying why):
// - a pattern with back-references (no breadth-first form): strings;
// - `patternProperties` (valijson compiles those itself): object keys;
// - the date and time `format`s (valijson's own regular expressions): runs of digits, the only
//   part of a string those expressions repeat over.
constexpr std::size_t kMaxDepthFirstSubject = 4096;

// Which values of an instance meet a depth-first match (see above).
struct DepthFirst {
  bool strings = false;
  bool keys = false;
  bool digit_runs = false;
  bool any() const noexcept { return strings || keys || digit_runs; }
};

struct JsonSchema::Impl {
  nlohmann::json document;
  valijson::Schema schema;
  std::unordered_map<std::string, std::regex> patterns;  // valijson's cache, filled at compile()
  DepthFirst depth_first;
  bool recursive = false;  // a $ref leads back to an enclosing subschema (see kMaxValueDepth)
};

JsonSchema::JsonSchema(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JsonSchema::JsonSchema(JsonSchema&&) noexcept = default;
JsonSchema& JsonSchema::operator=(JsonSchema&&) noexcept = default;
JsonSchema::~JsonSchema() = default;

const nlohmann::json& JsonSchema::document() const noexcept { return impl_->document; }

namespace {

using Json = nlohmann::json;

// The node of `root` that the local $ref `ref` ("#...") points at, found as valijson finds it
// (SchemaParser's sanitiseJsonPointer, then json_pointer::resolveJsonPointer), not as RFC 6901
// reads it: trailing '/' are trimmed, empty tokens are skipped ("#/" and "#//a" are "#" and
// "#/a"), each token is unescaped by valijson's own extractReferenceToken (~1, ~0, %XX), and an
// array index is read with std::stoul. A cycle is only found if every $ref is followed to where
// valijson goes (fuzz_input_schema: {"$ref": "#/"} made valijson recurse for ever while RFC 6901
// read it as the missing key ""). Iterative. nullptr where valijson finds nothing (it then
// reports the reference itself).
const Json* local_ref_target(const Json& root, const std::string& ref) {
  if (!ref.starts_with("#")) return nullptr;
  std::string pointer = ref.substr(1);
  pointer.erase(pointer.find_last_not_of('/') + 1);
  const std::string& text = pointer;
  const Json* node = &root;
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (text[pos] != '/') return nullptr;
    std::size_t next = text.find('/', pos + 1);
    if (next == std::string::npos) next = text.size();
    std::string token;
    try {
      token = valijson::internal::json_pointer::extractReferenceToken(
          text.cbegin() + static_cast<std::ptrdiff_t>(pos) + 1,
          text.cbegin() + static_cast<std::ptrdiff_t>(next));
    } catch (const std::exception&) {
      return nullptr;
    }
    pos = next;
    if (token.empty()) continue;
    if (node->is_array()) {
      if (token == "-") return nullptr;
      unsigned long index = 0;
      try {
        index = std::stoul(token);
      } catch (const std::exception&) {
        return nullptr;
      }
      if (index >= node->size()) return nullptr;
      node = &(*node)[index];
    } else if (node->is_object()) {
      const auto it = node->find(token);
      if (it == node->end()) return nullptr;
      node = &*it;
    } else {
      return nullptr;
    }
  }
  return node;
}

// The subschemas that apply to the same value as `node` does: a local $ref's target and the
// in-place applicators. A cycle among these recurses for ever in valijson, when it parses the
// schema or when it validates, whatever the value; cycles through properties/items are fine (each
// step descends into the value).
std::vector<const Json*> same_value_subschemas(const Json& root, const Json& node) {
  std::vector<const Json*> out;
  if (!node.is_object()) return out;
  if (auto ref = node.find("$ref"); ref != node.end() && ref->is_string())
    if (const Json* target = local_ref_target(root, ref->get_ref<const std::string&>()))
      out.push_back(target);
  for (const char* key : {"allOf", "anyOf", "oneOf"})
    if (auto list = node.find(key); list != node.end() && list->is_array())
      for (const auto& sub : *list) out.push_back(&sub);
  for (const char* key : {"not", "if", "then", "else"})
    if (auto sub = node.find(key); sub != node.end()) out.push_back(&*sub);
  if (auto deps = node.find("dependencies"); deps != node.end() && deps->is_object())
    for (const auto& sub : *deps)
      if (sub.is_object()) out.push_back(&sub);
  return out;
}

// The most states a regular expression of a schema may expand to, counting each repetition
// ({n}, {n,}, {n,m}) as that many copies of what it repeats (nested ones multiply). std::regex
// builds one state per copy, and its matcher walks them for each character: `(a{1000}){1000}` is
// a million states. A count of 19 digits or more also overflows inside libstdc++'s parser
// (fuzz_input_schema: undefined behaviour, a signed multiplication). Its parser also recurses once
// per character of a sequence and several times per nested group: with an 8 MB stack, a pattern
// of 100,000 characters or of 30,000 nested groups overflowed it (30,000 characters and 10,000
// groups did not; measured with g++ 12 -O2).
constexpr double kMaxRegexStates = 10'000;
constexpr std::size_t kMaxRegexNesting = 1'000;

// Why `pattern` expands past kMaxRegexStates or nests groups deeper than kMaxRegexNesting, or "".
// The states are an estimate from above, without parsing the whole grammar: an escape, a
// character class or any other character is one state; a group the sum of its alternatives; `*`,
// `+` and `?` double what they apply to; a repetition with bounds n and m multiplies it by
// max(n, m) + 1. A '{' that does not start a well-formed repetition is a character, as std::regex
// reads it (but its count, if any, is bounded all the same).
std::string regex_size_problem(const std::string& pattern) {
  struct Group {
    double outside = 0;  // the states of the enclosing groups (unchanged while this one is open)
    double total = 0;    // the alternatives and atoms before the last atom
    double last = 0;     // the last atom, which a quantifier applies to
  };
  std::vector<Group> groups(1);
  auto too_big = [&](double states) {
    return states > kMaxRegexStates
               ? fmt::format(
                     "it would expand to more than {} states (one per character, and "
                     "repetitions multiply what they repeat); write it shorter or with smaller "
                     "counts",
                     static_cast<long>(kMaxRegexStates))
               : std::string();
  };
  auto atom = [&](Group& g) {
    g.total += g.last;
    g.last = 1;
  };
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    Group& g = groups.back();
    switch (pattern[i]) {
      case '\\':
        ++i;
        atom(g);
        break;
      case '[': {
        atom(g);
        std::size_t j = i + 1;
        if (j < pattern.size() && pattern[j] == '^') ++j;
        if (j < pattern.size() && pattern[j] == ']') ++j;  // a leading ']' is a character
        while (j < pattern.size() && pattern[j] != ']') j += pattern[j] == '\\' ? 2u : 1u;
        i = j;
        break;
      }
      case '(':
        if (groups.size() > kMaxRegexNesting)
          return fmt::format("its groups nest more than {} deep", kMaxRegexNesting);
        groups.push_back({g.outside + g.total + g.last, 0, 0});
        break;
      case ')':
        if (groups.size() > 1) {
          const double inner = g.total + g.last;
          groups.pop_back();
          atom(groups.back());
          groups.back().last = inner;
        }
        break;
      case '|':
        g.total += g.last;
        g.last = 0;
        break;
      case '*':
      case '+':
      case '?':
        g.last *= 2;
        break;
      case '{': {
        // {n}, {n,} or {n,m}: digits only, else the '{' is a character.
        std::size_t j = i + 1;
        bool digits = false, well_formed = false;
        for (; j < pattern.size(); ++j) {
          const char c = pattern[j];
          if (c >= '0' && c <= '9') {
            digits = true;
            continue;
          }
          if (c == ',') continue;
          well_formed = c == '}' && digits;
          break;
        }
        // The largest bound written (its digits as a number; more than 15 digits is too large
        // whatever they say). Checked whether or not the repetition is well-formed: libstdc++
        // reads the digits after any '{' as a count, and overflows on a long one before it finds
        // no '}' (fuzz_input_schema: "a{6666...61" without its '}').
        double largest = 0;
        for (std::size_t k = i + 1; k < j;) {
          if (pattern[k] == ',') {
            ++k;
            continue;
          }
          double value = 0;
          std::size_t n = 0;
          for (; k < j && pattern[k] != ','; ++k, ++n) value = value * 10 + (pattern[k] - '0');
          largest = std::max(largest, n > 15 ? 1e16 : value);
        }
        if (largest > kMaxRegexStates)
          return fmt::format("its repetition count {} is more than {}",
                             utf8_prefix(pattern.substr(i, j - i + 1), 40),
                             static_cast<long>(kMaxRegexStates));
        if (!well_formed) {
          atom(g);
          break;
        }
        g.last *= largest + 1;
        i = j;
        break;
      }
      default:
        atom(g);
    }
    const Group& open = groups.back();
    if (auto problem = too_big(open.outside + open.total + open.last); !problem.empty())
      return problem;
  }
  return "";
}

// Each value of a document -> its parent and its key there; the top level has a null parent or no
// entry. A value's pointer is built from it only when a message needs one (building every value's
// would cost the square of the depth).
using Parents = std::unordered_map<const Json*, std::pair<const Json*, std::string>>;

// The JSON pointer of `node`, from `parents`.
std::string pointer_from(const Parents& parents, const Json* node) {
  std::vector<const std::string*> keys;
  for (auto it = parents.find(node); it != parents.end() && it->second.first;
       it = parents.find(it->second.first))
    keys.push_back(&it->second.second);
  std::string pointer;
  for (auto k = keys.rbegin(); k != keys.rend(); ++k) pointer = pointer_append(pointer, **k);
  return pointer;
}

// How deep valijson may recurse through a schema. It compiles a schema by recursing into each
// subschema and through each $ref, once per path it reaches a subschema by (its cache is keyed by
// that path); it validates by recursing through the compiled subschemas. Nothing bounds either
// but the schema: a chain of 40,000 $refs, each to the next definition, overflowed an 8 MB stack
// when compiled (20,000 did not), as did 80 definitions of 60 nested properties each, chained by
// $refs. A schema is refused when the longest way through it, counted in JSON values (a
// subschema and the object or array holding it are two), is longer than kMaxCompileDepth.
// Measured with one subschema per value (`items`, `not`, `additionalProperties` nested): g++ 12
// -O2 about 1.7 KB of stack per level (100 levels fit in 256 KB, 150 did not but fit in 512 KB);
// clang 14 with AddressSanitizer (the fuzz harnesses) about 32 KB (250 levels fit in 8 MB, 260
// did not).
constexpr std::size_t kMaxCompileDepth = 150;
// A recursive schema (a $ref back to an enclosing subschema) is also walked again for each level
// of the value it validates, each time through up to its longest chain of same-value subschemas
// ($ref, allOf, ..., see same_value_subschemas): the value's nesting (at most kMaxValueDepth,
// checked by validate()) times that chain must stay under kMaxValidateDepth. Measured: 1,200
// allOf applied in a row (a chain of 20 at each of 60 levels) overflowed 256 KB of stack with g++
// -O2 and 2 MB with AddressSanitizer; 2,400 fit in 8 MB with AddressSanitizer.
constexpr std::size_t kMaxValidateDepth = 2'000;
constexpr std::size_t kMaxValueDepth = 64;  // YamlLimits::max_depth, as check_input() bounds it

// Why valijson could recurse deeper than the bounds above through `root`, or "". `order` and
// `parents` are schema_problem()'s, `chain` its longest same-value chains. Sets `recursive` when a
// $ref leads back to an enclosing subschema. Iterative: a strongly connected component (Tarjan's
// algorithm) of subschemas joined by nesting and $refs may be walked in any order, so it counts
// as all its members; the longest path through the components, from the top level, bounds the
// compiler's recursion. A subschema is compiled again for each differently written $ref that
// reaches it (valijson keys its cache by the path it followed) and each "id" (which changes the
// keys), so the bound is multiplied by their number.
std::string recursion_problem(const Json& root, const std::vector<const Json*>& order,
                              const Parents& parents,
                              const std::unordered_map<const Json*, std::size_t>& chain,
                              bool& recursive) {
  auto pointer_of = [&](const Json* node) { return pointer_from(parents, node); };
  const std::size_t n = order.size();
  std::unordered_map<const Json*, std::size_t> index;
  for (std::size_t i = 0; i < n; ++i) index.emplace(order[i], i);
  std::vector<std::vector<std::size_t>> next(n);
  for (std::size_t i = 1; i < n; ++i) next[index.at(parents.at(order[i]).first)].push_back(i);
  // Whether `path` is the one valijson keys `node` by when it descends to it from the top level
  // ('/' and each key, raw). Costs the length of `path`, whatever the depth of `node`.
  auto is_raw_path = [&](std::string_view path, const Json* node) {
    for (auto it = parents.find(node); it != parents.end() && it->second.first;
         it = parents.find(it->second.first)) {
      const std::string& key = it->second.second;
      if (path.size() < key.size() + 1 || !path.ends_with(key) ||
          path[path.size() - key.size() - 1] != '/')
        return false;
      path.remove_suffix(key.size() + 1);
    }
    return path.empty();
  };
  std::unordered_set<std::string> aliases;  // $refs written otherwise than that path
  double copies = 1;
  for (std::size_t i = 0; i < n; ++i) {
    const Json& node = *order[i];
    if (!node.is_object()) continue;
    if (auto id = node.find("id"); id != node.end() && id->is_string()) ++copies;
    auto ref = node.find("$ref");
    if (ref == node.end() || !ref->is_string()) continue;
    const auto& text = ref->get_ref<const std::string&>();
    const Json* target = local_ref_target(root, text);
    if (!target) continue;  // valijson refuses it when it compiles
    auto to = index.find(target);
    if (to == index.end())
      return utf8_valid(fmt::format(
          "{}: $ref '{}' points into an enum, const, default or examples, which holds values, "
          "not schemas",
          readable_path(pointer_append(pointer_of(order[i]), "$ref")), utf8_prefix(text, 200)));
    next[i].push_back(to->second);
    std::string path = text.substr(text.find('#') + 1);
    path.erase(path.find_last_not_of('/') + 1);
    if (!is_raw_path(path, target)) aliases.insert(std::move(path));
  }
  copies *= static_cast<double>(1 + aliases.size());

  // Tarjan's algorithm, iterative; components come out after every component they lead to.
  constexpr std::size_t unseen = static_cast<std::size_t>(-1);
  std::vector<std::size_t> number(n, unseen), low(n), component(n, unseen), stack;
  std::vector<std::size_t> size;                           // of each component
  std::vector<std::pair<std::size_t, std::size_t>> calls;  // node, next successor
  std::size_t counter = 0;
  for (std::size_t start = 0; start < n; ++start) {
    if (number[start] != unseen) continue;
    calls.push_back({start, 0});
    number[start] = low[start] = counter++;
    stack.push_back(start);
    while (!calls.empty()) {
      auto& [v, k] = calls.back();
      if (k < next[v].size()) {
        const std::size_t w = next[v][k++];
        if (number[w] == unseen) {
          number[w] = low[w] = counter++;
          stack.push_back(w);
          calls.push_back({w, 0});
        } else if (component[w] == unseen) {
          low[v] = std::min(low[v], number[w]);
        }
        continue;
      }
      const std::size_t done = v;
      calls.pop_back();
      if (!calls.empty()) low[calls.back().first] = std::min(low[calls.back().first], low[done]);
      if (low[done] != number[done]) continue;
      size.push_back(0);
      std::size_t w;
      do {
        w = stack.back();
        stack.pop_back();
        component[w] = size.size() - 1;
        ++size.back();
      } while (w != done);
    }
  }
  recursive = std::any_of(size.begin(), size.end(), [](std::size_t s) { return s > 1; });

  // The longest path from each component (in values), and where it ends.
  std::vector<std::size_t> longest(size.size(), 0), end(size.size(), unseen);
  std::vector<std::vector<std::size_t>> members(size.size());
  for (std::size_t v = 0; v < n; ++v) members[component[v]].push_back(v);
  for (std::size_t c = 0; c < size.size(); ++c) {
    std::size_t best = 0, best_end = members[c].front();
    for (std::size_t v : members[c])
      for (std::size_t w : next[v])
        if (component[w] != c && longest[component[w]] > best) {
          best = longest[component[w]];
          best_end = end[component[w]];
        }
    longest[c] = size[c] + best;
    end[c] = best_end;
  }
  const double depth = static_cast<double>(longest[component[0]]) * copies;
  if (depth > static_cast<double>(kMaxCompileDepth))
    return utf8_valid(fmt::format(
        "{}: compiling it would recurse through up to {:.0f} nested values (subschemas, the "
        "objects and arrays that hold them, $refs) on the way to {}{}; at most {} are "
        "supported: make its nesting or its chains of $refs shorter",
        readable_path(""), depth, readable_path(pointer_of(order[end[component[0]]])),
        copies > 1 ? fmt::format(", each counted {:.0f} times (valijson compiles a subschema "
                                 "again for each differently written $ref to it and each \"id\")",
                                 copies)
                   : std::string(),
        kMaxCompileDepth));
  if (recursive) {
    const Json* start = nullptr;
    std::size_t longest_chain = 0;
    for (const Json* node : order)
      if (auto c = chain.find(node); c != chain.end() && c->second > longest_chain)
        std::tie(start, longest_chain) = std::pair{node, c->second};
    if ((kMaxValueDepth + 1) * longest_chain > kMaxValidateDepth)
      return utf8_valid(fmt::format(
          "{}: this recursive schema may apply {} subschemas in a row to one value ($ref, allOf, "
          "anyOf, oneOf, not, if/then/else, dependencies), again at each of up to {} levels of "
          "the value; at most {} in all are supported, so such a chain may be at most {} long",
          readable_path(pointer_of(start)), longest_chain, kMaxValueDepth + 1, kMaxValidateDepth,
          kMaxValidateDepth / (kMaxValueDepth + 1)));
  }
  return "";
}

// What valijson would crash or throw on later, found before it sees the schema: a regular
// expression std::regex refuses ("pattern" and "patternProperties" are compiled only when a value
// is validated, and then throw out of validate()), a $ref to another document (valijson resolves
// a relative one to this document and recurses for ever), a cycle of same-value subschemas, and a
// schema it would recurse through too deeply (recursion_problem, which sets `recursive`).
// Iterative throughout: the schema may be deeply nested. "" when there is none.
std::string schema_problem(const Json& root, bool& recursive) {
  // Its messages quote the pattern and its place, made valid UTF-8 (a schema built in memory,
  // not parsed, may hold any bytes).
  auto check_regex = [](const std::string& pattern, const std::string& pointer) -> std::string {
    if (auto problem = regex_size_problem(pattern); !problem.empty())
      return utf8_valid(fmt::format("{}: '{}' is not supported: {}", readable_path(pointer),
                                    utf8_prefix(pattern, 200), problem));
    try {
      std::regex compiled(pattern);
    } catch (const std::regex_error& e) {
      return utf8_valid(fmt::format("{}: '{}' is not a valid regular expression ({})",
                                    readable_path(pointer), utf8_prefix(pattern, 200), e.what()));
    }
    return "";
  };
  Parents parents;                 // every node that may be a schema
  std::vector<const Json*> order;  // the same nodes, root first
  auto pointer_of = [&](const Json* node) { return pointer_from(parents, node); };
  std::vector<const Json*> pending{&root};
  parents.emplace(&root, std::pair<const Json*, std::string>{nullptr, ""});
  while (!pending.empty()) {
    const Json* node = pending.back();
    pending.pop_back();
    order.push_back(node);
    auto visit = [&](const Json& child, std::string key) {
      parents.emplace(&child, std::pair<const Json*, std::string>{node, std::move(key)});
      pending.push_back(&child);
    };
    if (node->is_array()) {
      for (std::size_t i = 0; i < node->size(); ++i) visit((*node)[i], std::to_string(i));
      continue;
    }
    if (!node->is_object()) continue;
    for (const auto& [key, value] : node->items()) {
      if (key == "pattern" && value.is_string()) {
        const auto problem =
            check_regex(value.get<std::string>(), pointer_append(pointer_of(node), key));
        if (!problem.empty()) return problem;
      } else if (key == "$ref" && value.is_string() &&
                 !value.get_ref<const std::string&>().starts_with("#")) {
        return fmt::format(
            "{}: $ref '{}' points outside this schema; only references inside it "
            "(#/definitions/...) are supported",
            readable_path(pointer_append(pointer_of(node), key)),
            utf8_prefix(value.get<std::string>(), 200));
      } else if (key == "patternProperties" && value.is_object()) {
        for (const auto& [regex, sub] : value.items()) {
          const auto problem =
              check_regex(regex, pointer_append(pointer_append(pointer_of(node), key), regex));
          if (!problem.empty()) return problem;
        }
      }
      if (key == "enum" || key == "const" || key == "default" || key == "examples") continue;
      visit(value, key);
    }
  }

  // The cycle check, which also measures the longest chain of same-value subschemas from each
  // node (in subschemas, itself included), once its successors are all done.
  enum class Color { grey, black };
  std::unordered_map<const Json*, Color> color;
  std::unordered_map<const Json*, std::size_t> chain;
  for (const Json* start : order) {
    if (color.contains(start)) continue;
    struct Frame {
      const Json* node;
      std::vector<const Json*> next;
      std::size_t index = 0;
    };
    std::vector<Frame> frames{{start, same_value_subschemas(root, *start)}};
    color[start] = Color::grey;
    while (!frames.empty()) {
      Frame& f = frames.back();
      if (f.index == f.next.size()) {
        std::size_t longest = 0;
        for (const Json* to : f.next) longest = std::max(longest, chain[to]);
        chain[f.node] = longest + 1;
        color[f.node] = Color::black;
        frames.pop_back();
        continue;
      }
      const Json* to = f.next[f.index++];
      if (auto c = color.find(to); c == color.end()) {
        color[to] = Color::grey;
        frames.push_back({to, same_value_subschemas(root, *to)});
      } else if (c->second == Color::grey) {
        return fmt::format(
            "{}: its $ref/allOf/anyOf/oneOf/not/if/then/else lead back to it "
            "without descending into the value, so it could never be checked",
            readable_path(pointer_of(to)));
      }
    }
  }
  return recursion_problem(root, order, parents, chain, recursive);
}

}  // namespace

namespace {

// Every `pattern` of `document`, breadth-first where the pattern allows; `depth_first` says what
// will still match depth-first (see kMaxDepthFirstSubject). schema_problem() has already checked
// that each pattern compiles.
std::unordered_map<std::string, std::regex> compile_patterns(const Json& document,
                                                             DepthFirst& depth_first) {
  std::unordered_map<std::string, std::regex> patterns;
  std::vector<const Json*> pending{&document};
  while (!pending.empty()) {
    const Json* node = pending.back();
    pending.pop_back();
    if (node->is_array()) {
      for (const auto& child : *node) pending.push_back(&child);
      continue;
    }
    if (!node->is_object()) continue;
    for (const auto& [key, value] : node->items()) {
      if (key == "enum" || key == "const" || key == "default" || key == "examples") continue;
      if (key == "pattern" && value.is_string()) {
        const auto& pattern = value.get_ref<const std::string&>();
        if (patterns.contains(pattern)) continue;
        try {
          patterns.emplace(pattern, std::regex(pattern, std::regex::ECMAScript |
                                                            std::regex_constants::__polynomial));
        } catch (const std::regex_error&) {  // back-references
          patterns.emplace(pattern, std::regex(pattern));
          depth_first.strings = true;
        }
        continue;
      }
      if (key == "patternProperties") depth_first.keys = true;
      if (key == "format" && value.is_string()) depth_first.digit_runs = true;
      pending.push_back(&value);
    }
  }
  return patterns;
}

// The longest run of ASCII digits in `text`.
std::size_t longest_digit_run(std::string_view text) {
  std::size_t longest = 0, run = 0;
  for (const char c : text) {
    run = (c >= '0' && c <= '9') ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  return longest;
}

// The first value of `instance` that a depth-first match would recurse over for more than
// kMaxDepthFirstSubject characters, as a problem.
std::optional<SchemaProblem> overlong_subject(const Json& instance, DepthFirst depth_first) {
  auto too_long = [&](const std::string& where, std::string what, std::size_t size,
                      const char* why) {
    return SchemaProblem{
        where, fmt::format("{}: {} is {} bytes; this schema checks it against {}, which is "
                           "matched only up to {} bytes",
                           readable_path(where), what, size, why, kMaxDepthFirstSubject)};
  };
  std::vector<std::pair<const Json*, std::string>> pending{{&instance, ""}};
  while (!pending.empty()) {
    auto [node, pointer] = std::move(pending.back());
    pending.pop_back();
    if (node->is_string()) {
      const auto& text = node->get_ref<const std::string&>();
      if (depth_first.strings && text.size() > kMaxDepthFirstSubject)
        return too_long(pointer, "the string", text.size(),
                        "a regular expression with back-references");
      if (depth_first.digit_runs && text.size() > kMaxDepthFirstSubject) {
        if (const std::size_t run = longest_digit_run(text); run > kMaxDepthFirstSubject)
          return too_long(pointer, "a run of digits in the string", run, "a date or time format");
      }
    } else if (node->is_array()) {
      for (std::size_t i = 0; i < node->size(); ++i)
        pending.emplace_back(&(*node)[i], pointer_append(pointer, std::to_string(i)));
    } else if (node->is_object()) {
      for (const auto& [key, value] : node->items()) {
        if (depth_first.keys && key.size() > kMaxDepthFirstSubject)
          return too_long(pointer, "a key of this object", key.size(), "patternProperties");
        pending.emplace_back(&value, pointer_append(pointer, key));
      }
    }
  }
  return std::nullopt;
}

// The pointer of the first value of `instance` nested deeper than `depth` levels (the top level
// being 0), or nothing. Iterative.
std::optional<std::string> deeper_than(const Json& instance, std::size_t depth) {
  std::vector<std::pair<const Json*, std::size_t>> pending{{&instance, 0}};
  Parents parents;
  while (!pending.empty()) {
    auto [node, level] = pending.back();
    pending.pop_back();
    if (level > depth) return pointer_from(parents, node);
    if (node->is_array()) {
      for (std::size_t i = 0; i < node->size(); ++i) {
        parents.emplace(&(*node)[i], std::pair{node, std::to_string(i)});
        pending.push_back({&(*node)[i], level + 1});
      }
    } else if (node->is_object()) {
      for (const auto& [key, value] : node->items()) {
        parents.emplace(&value, std::pair{node, key});
        pending.push_back({&value, level + 1});
      }
    }
  }
  return std::nullopt;
}

}  // namespace

Result<JsonSchema> JsonSchema::compile(nlohmann::json schema) {
  auto impl = std::make_unique<Impl>();
  impl->document = std::move(schema);
  if (!impl->document.is_object() && !impl->document.is_boolean())
    return make_error(Errc::invalid_argument, "a JSON Schema must be an object or a boolean");
  if (auto problem = schema_problem(impl->document, impl->recursive); !problem.empty())
    return make_error(Errc::invalid_argument, fmt::format("invalid JSON Schema: {}", problem));
  try {
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(impl->document);
    parser.populateSchema(adapter, impl->schema);
  } catch (const std::exception& e) {
    // valijson's text quotes parts of the schema as it decoded them: a $ref's percent-escapes
    // (`#/%EF...`) become raw bytes that need not be UTF-8.
    return make_error(Errc::invalid_argument,
                      fmt::format("invalid JSON Schema: {}", utf8_valid(e.what())));
  }
  impl->patterns = compile_patterns(impl->document, impl->depth_first);
  return JsonSchema(std::move(impl));
}

std::string readable_path(std::string_view pointer) {
  if (pointer.empty()) return "(top level)";
  std::string out;
  std::size_t pos = 1;
  while (pos <= pointer.size()) {
    std::size_t next = pointer.find('/', pos);
    if (next == std::string_view::npos) next = pointer.size();
    std::string token(pointer.substr(pos, next - pos));
    for (std::size_t i; (i = token.find("~1")) != std::string::npos;) token.replace(i, 2, "/");
    for (std::size_t i; (i = token.find("~0")) != std::string::npos;) token.replace(i, 2, "~");
    const bool index = !token.empty() && token.find_first_not_of("0123456789") == std::string::npos;
    if (index)
      out += "[" + token + "]";
    else
      out += (out.empty() ? "" : ".") + token;
    pos = next + 1;
  }
  return out;
}

namespace {

// valijson context ["<root>", "[flows]", "[0]"] -> JSON pointer "/flows/0".
std::string context_pointer(const std::vector<std::string>& context) {
  std::string pointer;
  for (const auto& c : context) {
    if (c == "<root>") continue;
    std::string_view token = c;
    if (token.size() >= 2 && token.front() == '[' && token.back() == ']')
      token = token.substr(1, token.size() - 2);
    pointer = pointer_append(pointer, token);
  }
  return pointer;
}

// Follows local $refs from `node` as valijson does (local_ref_target), at most 16 in a row.
const nlohmann::json* resolve_ref(const nlohmann::json& root, const nlohmann::json* node) {
  for (int guard = 0; node && node->is_object() && guard < 16; ++guard) {
    const auto ref = node->find("$ref");
    if (ref == node->end() || !ref->is_string()) break;
    node = local_ref_target(root, ref->get_ref<const std::string&>());
  }
  return node;
}

// The subschema that applies to the value at `pointer` (properties/additionalProperties/items and
// local $refs only; enough for flowreg's own schemas), or nullptr.
const nlohmann::json* subschema_at(const nlohmann::json& root, std::string_view pointer) {
  const nlohmann::json* node = resolve_ref(root, &root);
  std::size_t pos = 1;
  while (node && pos <= pointer.size() && !pointer.empty()) {
    std::size_t next = pointer.find('/', pos);
    if (next == std::string_view::npos) next = pointer.size();
    const std::string token(pointer.substr(pos, next - pos));
    pos = next + 1;
    if (!node->is_object()) return nullptr;
    if (auto props = node->find("properties"); props != node->end() && props->contains(token))
      node = &(*props)[token];
    else if (auto items = node->find("items"); items != node->end() && items->is_object())
      node = &*items;
    else if (auto extra = node->find("additionalProperties");
             extra != node->end() && extra->is_object())
      node = &*extra;
    else
      return nullptr;
    node = resolve_ref(root, node);
  }
  return node;
}

std::string type_name(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::object:
      return "a mapping";
    case nlohmann::json::value_t::array:
      return "a list";
    case nlohmann::json::value_t::string:
      return fmt::format("the string '{}'", value.get<std::string>());
    case nlohmann::json::value_t::boolean:
      return value.get<bool>() ? "true" : "false";
    case nlohmann::json::value_t::number_float:
      return fmt::format("the number {}", value.dump());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
      return fmt::format("the integer {}", value.dump());
    default:
      return "a value";
  }
}

std::string expected_types(const nlohmann::json& schema) {
  auto name = [](const std::string& t) -> std::string {
    if (t == "object") return "a mapping";
    if (t == "array") return "a list";
    if (t == "integer") return "an integer";
    if (t == "boolean") return "true or false";
    if (t == "string") return "a string";
    if (t == "number") return "a number";
    return t;
  };
  std::vector<std::string> names;
  if (auto t = schema.find("type"); t != schema.end()) {
    if (t->is_string())
      names.push_back(name(t->get<std::string>()));
    else if (t->is_array())
      for (const auto& one : *t)
        if (one.is_string()) names.push_back(name(one.get<std::string>()));
  }
  return fmt::format("{}", fmt::join(names, " or "));
}

// `key` of `sub` when `sub` is an object that has it, else nullptr. The subschema a pointer leads
// to may hold any JSON (it need not be the one valijson applied: allOf, anyOf... are not
// followed), and making a message must never throw.
const nlohmann::json* member(const nlohmann::json* sub, const char* key) {
  if (!sub || !sub->is_object()) return nullptr;
  const auto it = sub->find(key);
  return it == sub->end() ? nullptr : &*it;
}

std::string humanize(const nlohmann::json& root, const nlohmann::json& instance,
                     std::string& pointer, const std::string& description) {
  const nlohmann::json* sub = subschema_at(root, pointer);
  const nlohmann::json* value = nullptr;
  try {
    value = &instance.at(nlohmann::json::json_pointer(pointer));
  } catch (const std::exception&) {
  }
  const std::string where = readable_path(pointer);
  const nlohmann::json* described = member(sub, "description");
  const std::string about =
      described && described->is_string() ? described->get<std::string>() : std::string();

  static constexpr std::string_view kUnknown =
      "Object contains a property that could not be validated using 'properties' or "
      "'additionalProperties' constraints: '";
  if (description.starts_with(kUnknown)) {
    std::string key = description.substr(kUnknown.size());
    if (auto q = key.rfind("'."); q != std::string::npos) key.erase(q);
    std::vector<std::string> known;
    if (const auto* props = member(sub, "properties"); props && props->is_object())
      for (const auto& [k, v] : props->items()) known.push_back(k);
    const std::string hint = closest_match(key, known);
    const std::string at = where == "(top level)" ? "" : " in " + where;
    pointer = pointer_append(pointer, key);
    if (!hint.empty()) return fmt::format("unknown key '{}'{} (did you mean '{}'?)", key, at, hint);
    return fmt::format("unknown key '{}'{}; known keys: {}", key, at, fmt::join(known, ", "));
  }
  static constexpr std::string_view kRequired = "Missing required property '";
  if (description.starts_with(kRequired)) {
    std::string key = description.substr(kRequired.size());
    if (auto q = key.rfind("'."); q != std::string::npos) key.erase(q);
    return fmt::format("{}: missing required key '{}'", where, key);
  }
  if (description.starts_with("Value type not permitted") && member(sub, "type") && value)
    return fmt::format("{}: expected {}, got {}", where, expected_types(*sub), type_name(*value));
  if (description.starts_with("Failed to match regex") && value) {
    return fmt::format("{}: {} is not valid{}", where, type_name(*value),
                       about.empty() ? "" : ": " + about);
  }
  const nlohmann::json* listed = member(sub, "enum");
  if (description.starts_with("Failed to match against any enum") && listed && listed->is_array() &&
      value) {
    std::vector<std::string> options;
    for (const auto& e : *listed)
      options.push_back(e.is_string() ? e.get<std::string>() : e.dump());
    std::string hint;
    if (value->is_string())
      if (auto m = closest_match(value->get<std::string>(), options); !m.empty())
        hint = fmt::format(" (did you mean '{}'?)", m);
    return fmt::format("{}: expected one of {}, got {}{}", where, fmt::join(options, ", "),
                       type_name(*value), hint);
  }
  // A numeric keyword of the subschema as written, or "" when it is not there or not a number.
  auto number = [&](const char* key) {
    const nlohmann::json* n = member(sub, key);
    return n && n->is_number() ? n->dump() : std::string();
  };
  if ((description.starts_with("Expected number greater") ||
       description.starts_with("Expected number less")) &&
      value && (!number("minimum").empty() || !number("maximum").empty())) {
    std::string range;
    if (!number("minimum").empty() && !number("maximum").empty())
      range = fmt::format("between {} and {}", number("minimum"), number("maximum"));
    else if (!number("minimum").empty())
      range = fmt::format("at least {}", number("minimum"));
    else
      range = fmt::format("at most {}", number("maximum"));
    return fmt::format("{}: {} is out of range; it must be {}", where, value->dump(), range);
  }
  if (description.starts_with("Array should contain no fewer than") && !number("minItems").empty())
    return fmt::format("{}: needs at least {} item(s)", where, number("minItems"));
  if (description.starts_with("Array should contain no more than") && !number("maxItems").empty())
    return fmt::format("{}: has more than {} items", where, number("maxItems"));
  if (description.starts_with("String should be no longer than") && !number("maxLength").empty())
    return fmt::format("{}: is longer than {} characters", where, number("maxLength"));
  return fmt::format("{}: {}", where, description);
}

}  // namespace

std::vector<SchemaProblem> JsonSchema::validate(const nlohmann::json& instance) const {
  std::vector<SchemaProblem> out;
  if (impl_->recursive) {
    // A recursive schema recurses once more for each level of the value (kMaxValidateDepth).
    if (auto at = deeper_than(instance, kMaxValueDepth)) {
      out.push_back(SchemaProblem{
          *at, utf8_valid(fmt::format("{}: the value nests deeper than {} levels, more than this "
                                      "recursive schema can check",
                                      readable_path(*at), kMaxValueDepth))});
      return out;
    }
  }
  if (impl_->depth_first.any()) {
    if (auto problem = overlong_subject(instance, impl_->depth_first)) {
      out.push_back(std::move(*problem));
      return out;
    }
  }
  valijson::ValidationResults results;
  valijson::adapters::NlohmannJsonAdapter adapter(instance);
  // What valijson::Validator::validate does, with the breadth-first patterns in its regex cache (a
  // copy: the visitor adds to it, and validate() may run concurrently).
  auto patterns = impl_->patterns;
  valijson::ValidationVisitor<valijson::adapters::NlohmannJsonAdapter> visitor(
      adapter, std::vector<std::string>(1, "<root>"), /*strictTypes=*/true, &results, patterns);
  try {
    if (visitor.validateSchema(impl_->schema)) return out;
  } catch (const std::exception& e) {
    // A regular expression compile() could not see (under a key it does not descend into).
    out.push_back(SchemaProblem{
        "", fmt::format("the schema could not be applied: {}", utf8_valid(e.what()))});
    return out;
  }
  valijson::ValidationResults::Error error;
  while (results.popError(error)) {
    // The chain "Failed to validate item #0 in array" / "... property name 'x'" only repeats, one
    // level up, the leaf error that caused it.
    if (error.description.starts_with("Failed to validate")) continue;
    std::string pointer = context_pointer(error.context);
    std::string message = humanize(impl_->document, instance, pointer, error.description);
    out.push_back(SchemaProblem{std::move(pointer), std::move(message)});
  }
  return out;
}

const JsonSchema& flow_file_schema() {
  static const JsonSchema schema = [] {
    auto compiled = JsonSchema::compile(nlohmann::json::parse(kFlowSchemaText));
    if (!compiled) std::abort();  // the embedded schema is tested; this cannot fail at run time
    return std::move(*compiled);
  }();
  return schema;
}

}  // namespace flowreg::detail
