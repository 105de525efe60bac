#include "plugin/name_ownership.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <system_error>
#include <tuple>
#include <utility>

#include "util/json_text.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;

namespace {}  // namespace

fs::path file_key(const fs::path& path) {
  std::error_code ec;
  fs::path key = fs::weakly_canonical(path, ec);
  if (ec) key = fs::absolute(path, ec).lexically_normal();
  return key;
}

bool same_file(const fs::path& a, const fs::path& b) {
  return a == b || file_key(a) == file_key(b);
}

PluginError Conflict::error(std::string_view verb) const {
  if (kind == Kind::module_name)
    return plugin_error(PluginStage::registration,
                        fmt::format("{} module name '{}' held by {}", verb, name, holder_file),
                        Errc::duplicate_module);
  return plugin_error(PluginStage::registration,
                      fmt::format("{} slug '{}' held by module '{}'{}", verb, name, holder_module,
                                  holder_file.empty() ? "" : " (" + holder_file + ")"),
                      Errc::duplicate_slug);
}

nlohmann::json NameOwnership::read_owners() const {
  nlohmann::json owners = parse_state_file(owners_file());
  if (!owners.is_object()) return nlohmann::json::object();
  return owners;
}

void NameOwnership::load() {
  const nlohmann::json owners = read_owners();
  for (const auto& [file, names] : owners.items()) {
    if (!names.is_object() || !names.contains("module") || !names["module"].is_string()) continue;
    const std::string module = names["module"].get<std::string>();
    incumbents_.insert(fs::path(file));
    reserved_["module:" + module] = Reservation{fs::path(file), module};
    for (const auto& slug : names.value("flows", nlohmann::json::array()))
      if (slug.is_string()) reserved_["slug:" + slug.get<std::string>()] = {fs::path(file), module};
  }
}

void NameOwnership::save(const fs::path& plugins_dir, const std::vector<HeldNames>& held) const {
  const fs::path dir = file_key(plugins_dir);
  const nlohmann::json before = read_owners();
  nlohmann::json owners = nlohmann::json::object();
  for (const auto& [file, names] : before.items())
    if (file_key(fs::path(file)).parent_path() != dir) owners[file] = names;
  for (const auto& h : held) {
    nlohmann::json& names = owners[file_key(h.file).string()];
    names["module"] = h.module;
    names["flows"] = nlohmann::json::array();
    for (const auto& slug : h.flows) names["flows"].push_back(slug);
  }
  if (owners == before) return;
  std::error_code ec;
  if (fs::create_directories(cache_dir_, ec))
    fs::permissions(cache_dir_, fs::perms::owner_all, fs::perm_options::replace, ec);
  const fs::path tmp = cache_dir_ / ("owners.json.tmp" + std::to_string(getpid()));
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << owners.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    if (!out) return;
  }
  fs::rename(tmp, owners_file(), ec);
  if (ec) fs::remove(tmp, ec);
}

std::optional<Conflict> NameOwnership::reserved_conflict(const std::string& module,
                                                         const std::vector<std::string>& flows,
                                                         const fs::path& path) const {
  const fs::path self = file_key(path);
  if (const Reservation* r = reserved_for_other("module:" + module, self))
    return Conflict{Conflict::Kind::module_name, module, r->module, r->file.string()};
  for (const auto& slug : flows)
    if (const Reservation* r = reserved_for_other("slug:" + slug, self))
      return Conflict{Conflict::Kind::slug, slug, r->module, r->file.string()};
  return std::nullopt;
}

const NameOwnership::Reservation* NameOwnership::reserved_for_other(const std::string& key,
                                                                    const fs::path& self) const {
  auto it = reserved_.find(key);
  if (it == reserved_.end() || it->second.file == self || !pending_.contains(it->second.file))
    return nullptr;
  return &it->second;
}

std::vector<FileChange> NameOwnership::claim_order(std::vector<FileChange> present) const {
  struct Keyed {
    bool newcomer;
    std::int64_t ctime_ns;
    FileChange change;
  };
  std::vector<Keyed> keyed;
  for (auto& change : present) {
    struct stat st {};
    const std::int64_t ctime_ns =
        stat(change.path.c_str(), &st) == 0
            ? static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec
            : 0;
    const bool newcomer = !incumbents_.contains(file_key(change.path));
    keyed.push_back(Keyed{newcomer, ctime_ns, std::move(change)});
  }
  std::stable_sort(keyed.begin(), keyed.end(), [](const Keyed& a, const Keyed& b) {
    return std::tie(a.newcomer, a.ctime_ns, a.change.path) <
           std::tie(b.newcomer, b.ctime_ns, b.change.path);
  });
  std::vector<FileChange> out;
  for (auto& k : keyed) out.push_back(std::move(k.change));
  return out;
}

void NameOwnership::begin_batch(const std::vector<FileChange>& present) {
  for (const auto& change : present) pending_.insert(file_key(change.path));
}

void NameOwnership::take_from_batch(const fs::path& path) { pending_.erase(file_key(path)); }

void NameOwnership::end_batch() { pending_.clear(); }

}  // namespace flowreg::detail
