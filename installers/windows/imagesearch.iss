; Inno Setup script: the Windows installer for the frozen app (PyInstaller, one folder).
;
;   pyinstaller --noconfirm --distpath build\dist --workpath build\pyinstaller installers\imagesearch.spec
;   iscc /DAppVersion=0.1.0 installers\windows\imagesearch.iss   -> build\imagesearch-0.1.0-setup.exe
;
; Installs for the current user by default (no administrator needed; the dialog offers all
; users). Uninstalling removes the program folder only: the library (catalog, index,
; thumbnails, settings) in %LOCALAPPDATA%\imagesearch and the model weights in
; %LOCALAPPDATA%\imagesearch\Cache\models stay, as the README says.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define Root "..\.."

[Setup]
AppId={{6C3F2E7A-4B1D-4C8E-9A55-2F0D7B1E9C41}
AppName=imagesearch
AppVersion={#AppVersion}
AppPublisher=The imagesearch maintainers
DefaultDirName={autopf}\imagesearch
DefaultGroupName=imagesearch
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#Root}\build
OutputBaseFilename=imagesearch-{#AppVersion}-setup
SetupIconFile={#Root}\resources\imagesearch.ico
UninstallDisplayIcon={app}\imagesearch-gui.exe
; The bundle is mostly PyTorch's and Qt's DLLs: LZMA2 in one solid block packs them best.
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
ChangesEnvironment=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add the imagesearch command to PATH"; GroupDescription: "Command line:"

[Files]
Source: "{#Root}\build\dist\imagesearch\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\imagesearch"; Filename: "{app}\imagesearch-gui.exe"
Name: "{autodesktop}\imagesearch"; Filename: "{app}\imagesearch-gui.exe"; Tasks: desktopicon

[Registry]
; The per-user PATH (HKCU) or, installed for all users, the machine's; removed on uninstall.
Root: HKA; Subkey: "{code:EnvironmentKey}"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NotOnPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\imagesearch-gui.exe"; Description: "{cm:LaunchProgram,imagesearch}"; Flags: nowait postinstall skipifsilent

[Code]
function EnvironmentKey(Param: String): String;
begin
  if IsAdminInstallMode then
    Result := 'SYSTEM\CurrentControlSet\Control\Session Manager\Environment'
  else
    Result := 'Environment';
end;

function NotOnPath(Dir: String): Boolean;
var
  Path: String;
begin
  if not RegQueryStringValue(HKA, EnvironmentKey(''), 'Path', Path) then
    Path := '';
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Path, Dir: String;
  P: Integer;
begin
  if CurUninstallStep <> usPostUninstall then
    Exit;
  if not RegQueryStringValue(HKA, EnvironmentKey(''), 'Path', Path) then
    Exit;
  Dir := ';' + ExpandConstant('{app}');
  P := Pos(Uppercase(Dir), Uppercase(Path));
  if P > 0 then
  begin
    Delete(Path, P, Length(Dir));
    RegWriteExpandStringValue(HKA, EnvironmentKey(''), 'Path', Path);
  end;
end;
